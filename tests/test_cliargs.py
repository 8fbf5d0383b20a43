import argparse

import pytest

from rs2sam2.cliargs import number


def parser():
    p = argparse.ArgumentParser(prog="rs2sam2 x")
    p.add_argument("--lr", type=number(float, low=0, low_open=True))
    p.add_argument("--p", type=number(float, low=0, high=1, high_open=True))
    p.add_argument("--n", type=number(int, low=1, high=10))
    return p


def test_values_in_range_parse():
    args = parser().parse_args(["--lr", "1e-3", "--p", "0", "--n", "10"])
    assert (args.lr, args.p, args.n) == (1e-3, 0.0, 10)


@pytest.mark.parametrize("argv, expected", [
    (["--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
    (["--lr", "0"], "argument --lr: expected a finite number > 0, got '0'"),
    (["--p", "1"], "argument --p: expected a finite number in [0, 1), got '1'"),
    (["--p", "inf"], "argument --p: expected a finite number in [0, 1), got 'inf'"),
    (["--n", "0"], "argument --n: expected an integer in [1, 10], got '0'"),
    (["--n", "2.5"], "argument --n: expected an integer in [1, 10], got '2.5'"),
])
def test_values_out_of_range_exit_2_with_one_message(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(argv)
    assert exc.value.code == 2
    assert f"rs2sam2 x: error: {expected}" in capsys.readouterr().err
