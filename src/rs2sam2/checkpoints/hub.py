"""Model repositories on the Hugging Face Hub as checkpoint sources: files of ``owner/name`` at a
revision, fetched into huggingface_hub's cache.

huggingface_hub decides where the cache is (``HF_HUB_CACHE``, else ``HF_HOME/hub``) and whether to
go online (``HF_HUB_OFFLINE=1``: the cache only); which files a checkpoint needs is decided by
:func:`.folders.locate`, which asks for them one by one so that nothing else of the repository is
downloaded. huggingface_hub is the optional extra ``rs2sam2[hub]``; without it a Hub id is an error
that names the extra.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from ..extras import MissingExtraError, require
from .convert import CheckpointError

# one part of a repo id: letters, digits, '-', '_', '.', neither starting nor ending with '-' or '.'
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def is_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub model id, ``owner/name`` (no ``--`` or ``..``)."""
    return bool(_REPO_ID.fullmatch(text)) and "--" not in text and ".." not in text


def _hf(repo_id: str):
    try:
        huggingface_hub = require("huggingface_hub", "loading it as a Hugging Face Hub id")
        require("huggingface_hub.utils")  # the error types
    except MissingExtraError as e:
        raise CheckpointError(f"checkpoint not found: {repo_id} is not a local path, and {e}") from None
    return huggingface_hub


class HubRepo:
    """One model repository at one revision (a branch, tag or commit; default ``main``).

    :meth:`file` returns the cached path of a file, downloading it first when online; it tells a
    file the repository lacks (None) from a repository or revision that does not exist
    (:class:`CheckpointError`). :meth:`why_missing` explains, from the cache, why files were not found.
    """

    def __init__(self, repo_id: str, revision: str | None = None):
        self.hf = _hf(repo_id)
        self.repo_id = repo_id
        self.revision = revision or "main"
        self.hub_said_missing = False  # the last file not found: the Hub said so (else: not in the cache)
        # When the Hub does not answer, huggingface_hub retries for about half a minute for a file that
        # is not cached; so after that, only the cache is read. Once a file came back, the other files
        # are asked for at its commit: cached ones are then read without any request, and every file
        # of a checkpoint comes from the same commit.
        self.cache_only = False
        self.commit: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id} (revision {self.revision})"

    def file(self, filename: str) -> Path | None:
        """The local path of ``filename`` (a path inside the repository); None when the repository
        has no such file, or when the Hub cannot be asked (offline, unreachable) and it is not cached."""
        errors = self.hf.utils
        try:
            path = Path(self.hf.hf_hub_download(self.repo_id, filename, revision=self.commit or self.revision,
                                                local_files_only=self.cache_only))
        except errors.LocalEntryNotFoundError:  # offline or unreachable, and not in the cache
            self.hub_said_missing, self.cache_only = False, True
            return None
        except errors.EntryNotFoundError:  # the Hub answered: no such file
            self.hub_said_missing = True
            return None
        except errors.RevisionNotFoundError as e:
            raise CheckpointError(f"{self.repo_id}: no revision {self.revision!r} on the Hugging Face Hub") from e
        except errors.RepositoryNotFoundError as e:  # also gated and private repositories without access
            raise CheckpointError(
                f"{self.repo_id}: no such model repository on the Hugging Face Hub, or it is private or gated "
                "and this machine is not logged in with access to it") from e
        except (errors.HfHubHTTPError, errors.HFValidationError, OSError) as e:
            raise CheckpointError(f"{self}: cannot fetch {filename} from the Hugging Face Hub ({e})") from e
        snapshot = path.parents[len(PurePosixPath(filename).parts) - 1]  # <cache>/models--o--n/snapshots/<commit>
        if snapshot.parent.name == "snapshots" and _COMMIT.fullmatch(snapshot.name):
            self.commit = snapshot.name
        return path

    def cache_folder(self) -> Path:
        """The repository's folder in the cache (``<cache>/models--owner--name``), as huggingface_hub lays it."""
        return Path(self.hf.constants.HF_HUB_CACHE) / ("models--" + self.repo_id.replace("/", "--"))

    def why_missing(self, subfolder: str, names: tuple[str, ...]) -> str:
        """Why none of ``names`` was found in ``subfolder`` ("" = the top): the Hub's answer, or what
        the cache holds and why the Hub was not asked."""
        where = f"subfolder {subfolder!r}" if subfolder else "the top folder"
        if self.hub_said_missing:
            return (f"{self} has none of {', '.join(names)} in {where} on the Hugging Face Hub"
                    + ("" if subfolder else " (is the checkpoint in a subfolder? choose it with --subfolder, "
                       "subfolder= in Python)"))
        reason = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if self.hf.constants.HF_HUB_OFFLINE
                  else "the Hugging Face Hub could not be reached")
        return f"{self._cached(where, names)}; {reason}: run once with network access to fill the cache"

    def _cached(self, where: str, names: tuple[str, ...]) -> str:
        root = self.cache_folder()
        if not root.is_dir():
            return f"the cache {root.parent} does not hold {self.repo_id}"
        snapshot = self._snapshot(root)
        if snapshot is None:
            refs = sorted(p.relative_to(root / "refs").as_posix() for p in (root / "refs").rglob("*") if p.is_file())
            return (f"the cache {root} does not hold revision {self.revision!r} of it "
                    f"(cached revisions: {', '.join(refs) or 'none'})")
        with_weights = sorted({p.parent.relative_to(snapshot).as_posix() for n in names for p in snapshot.rglob(n)})
        held = f" (cached folders with weights: {', '.join(with_weights)})" if with_weights else ""
        return f"its cached snapshot {snapshot} has none of {', '.join(names)} in {where}{held}"

    def _snapshot(self, root: Path) -> Path | None:
        commit = self.revision
        if not _COMMIT.fullmatch(commit):
            ref = root / "refs" / self.revision
            if not ref.is_file():
                return None
            commit = ref.read_text().strip()
        snapshot = root / "snapshots" / commit
        return snapshot if snapshot.is_dir() else None
