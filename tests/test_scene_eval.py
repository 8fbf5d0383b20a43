"""Scene figures on generated mosaics (rs2sam2.scene_eval): the jobs, and the figures of known masks."""

from __future__ import annotations

import numpy as np

from rs2sam2.scene_eval import mosaic_jobs, score


def test_jobs_are_the_targets_first_sentences_and_the_absent_ones():
    jobs = mosaic_jobs(2, seed=7, ks=(2,), size=64)
    assert {job.image.shape for job in jobs} == {(128, 128, 3)}
    targets = [job for job in jobs if not job.absent]
    assert targets and any(job.absent for job in jobs)
    for job in targets:  # the target lies in its cell
        rows, cols = job.cell_window()
        assert job.target[rows, cols].sum() == job.target.sum() > 0
    assert mosaic_jobs(2, seed=7, ks=(2,), size=64)[0].text == jobs[0].text  # seeded


def test_figures_of_known_answers():
    jobs = mosaic_jobs(1, seed=7, ks=(2,), size=64)
    empty = np.zeros((128, 128), bool)
    perfect = [empty if job.absent else job.target for job in jobs]
    figures = score(jobs, perfect)
    assert (figures["mIoU"], figures["iou_at_0.5"], figures["outside_cell_pct"], figures["absent_empty_pct"]) == \
        (100.0, 100.0, 0.0, 100.0)
    # every answer painted in a cell other than its target's, and every absent sentence painted
    wrong = []
    for job in jobs:
        mask = empty.copy()
        row, col = job.cell if not job.absent else (0, 0)
        mask[(1 - row) * 64:(2 - row) * 64, (1 - col) * 64:(2 - col) * 64] = True
        wrong.append(mask)
    figures = score(jobs, wrong)
    assert (figures["mIoU"], figures["outside_cell_pct"], figures["absent_empty_pct"]) == (0.0, 100.0, 0.0)
    # on the cell alone (the right-cell run): the target cropped to its cell
    cells = [job.target[job.cell_window()] for job in jobs if not job.absent]
    assert score([job for job in jobs if not job.absent], cells, on_cell=True)["mIoU"] == 100.0
