"""Git revert + redeploy (runbook 003 method 2): revert the bad range, push, trigger the deploy.

Idempotent: the revert commit carries a ``Rollback-Key`` trailer, so a retried activity finds
its own commit on the remote instead of reverting twice; the deploy trigger is recorded in a
state file so it is called once per rollback.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client, resolve_secret, with_heartbeats, write_artifact
from workflows.config import GitTarget
from workflows.models import (
    AppVersion,
    CaptureRequest,
    CaptureResult,
    ConfigPlan,
    ConfigPlanRequest,
    ConfigRevertRequest,
    ExecuteRequest,
    ExecuteResult,
    ServiceRef,
    TargetRequest,
    UndoRequest,
)

KEY_TRAILER = "Rollback-Key"
RANGE_TRAILER = "Rolled-Back-From"  # <good>..<head>: the commits a rollback commit reverted
HISTORY_DEPTH = 500  # first-parent commits looked at for a target
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": "rollback", "GIT_AUTHOR_EMAIL": "rollback@localhost",
           "GIT_COMMITTER_NAME": "rollback", "GIT_COMMITTER_EMAIL": "rollback@localhost"}


class GitError(Exception):
    pass


async def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env={**os.environ, **GIT_ENV},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if check and process.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])} failed: {err.decode(errors='replace').strip()[-300:]}")
    return out.decode().strip()


@dataclass(frozen=True)
class Commit:
    sha: str
    tree: str
    parent: str
    body: str

    @property
    def ours(self) -> bool:
        """A commit this tool made (a rollback or an undo): never itself a rollback target."""
        return f"\n{KEY_TRAILER}: " in f"\n{self.body}"


async def first_parent_history(path: Path, head: str) -> list[Commit]:
    """`head` and its first-parent ancestors, newest first."""
    out = await git("log", "--first-parent", f"-{HISTORY_DEPTH}", "--format=%H%x00%T%x00%P%x00%B%x1e", head, cwd=path)
    commits = []
    for record in out.split("\x1e"):
        if record.strip():
            sha, tree, parents, body = record.strip("\n").split("\x00", 3)
            commits.append(Commit(sha, tree, parents.split(" ")[0] if parents else "", body))
    return commits


async def rolled_away_trees(path: Path, history: list[Commit]) -> set[str]:
    """The trees of every commit an earlier rollback reverted. A rollback commit names its range
    in a trailer; one written before the trailer existed is known to have rolled away from at
    least its parent (the head it replaced)."""
    trees: set[str] = set()
    for commit in history:
        if not commit.ours or commit.body.startswith("Undo failed rollback"):
            continue
        ranges = [line.split(":", 1)[1].strip() for line in commit.body.splitlines()
                  if line.startswith(f"{RANGE_TRAILER}:")]
        for spec in ranges or [f"{commit.parent}~1..{commit.parent}"]:
            listed = await git("log", "--format=%T", spec, cwd=path, check=False)
            trees.update(listed.split())
    return trees


class GitActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def _target(self, service: str) -> GitTarget:
        target = self._config.service(service).app.git
        if target is None:
            raise fail(f"service {service!r} has no git app target")
        return target

    def _config_target(self, service: str) -> GitTarget:
        target = self._config.service(service).config_repo()
        if target is None:
            raise fail(f"service {service!r} has no config_files section: add one naming the files (and a git "
                       "section unless the app deploys from git); nothing was changed", kind="ConfigError")
        return target

    async def _worktree(self, service: str, config_files: bool = False) -> tuple[GitTarget, Path]:
        """A working clone reset to the remote branch: our own, never the team's checkout. The
        config files may live in a repository of their own, cloned beside the app's."""
        target = self._config_target(service) if config_files else self._target(service)
        path = self._config.state_path("git", service, "config-work" if config_files else "work")
        try:
            if not (path / ".git").exists():
                await git("clone", "--quiet", "--branch", target.branch, target.repo, str(path))
            else:
                await git("fetch", "--quiet", "origin", cwd=path)
                await git("checkout", "--quiet", "-B", target.branch, f"origin/{target.branch}", cwd=path)
                await git("reset", "--quiet", "--hard", f"origin/{target.branch}", cwd=path)
        except GitError as exc:
            raise ApplicationError(f"service {service!r}: cannot fetch {target.repo} branch {target.branch}: {exc}") from None
        return target, path

    async def _version(self, path: Path, rev: str, target: GitTarget) -> AppVersion:
        sha = await git("rev-parse", f"{rev}^{{commit}}", cwd=path)
        subject = await git("log", "-1", "--format=%s", sha, cwd=path)
        schema = None
        if target.schema_file:
            shown = await git("show", f"{sha}:{target.schema_file}", cwd=path, check=False)
            schema = shown.strip() or None
        return AppVersion(provider="git", id=sha, label=f"{sha[:10]} {subject}", version=sha, schema_version=schema)

    @activity.defn(name="git.current")
    async def current(self, request: ServiceRef) -> AppVersion:
        target, path = await self._worktree(request.service)
        return await self._version(path, "HEAD", target)

    @activity.defn(name="git.select_target")
    async def select_target(self, request: TargetRequest) -> AppVersion:
        """The last good commit: explicit, or the newest first-parent ancestor of the head that is
        neither one of our own rollback commits nor a tree we rolled back from before, nor the
        tree already serving. An explicit commit we rolled back from is marked, so the plan asks
        for an approval that says it re-deploys a version once rolled back."""
        target, path = await self._worktree(request.service)
        history = await first_parent_history(path, request.current.id)
        rolled_away = await rolled_away_trees(path, history)
        current_tree = history[0].tree if history else ""
        if request.explicit:
            try:
                chosen = await self._version(path, request.explicit, target)
            except GitError:
                raise fail(f"commit {request.explicit!r} not found on {target.branch} of {target.repo}") from None
        else:
            good = next((c for c in history[1:] if not c.ours and c.tree not in rolled_away and c.tree != current_tree),
                        None)
            if good is None:
                raise fail(f"no earlier good commit on {target.branch}: every older commit is one we rolled back "
                           f"from, one of our rollback commits, or the code now serving ({request.current.label}); "
                           "pass --to COMMIT to choose one (re-deploying a version once rolled back needs approval)")
            chosen = await self._version(path, good.sha, target)
        if chosen.id == request.current.id:
            raise fail(f"{chosen.label} is already the head of {target.branch}; nothing to revert")
        try:
            await git("merge-base", "--is-ancestor", chosen.id, request.current.id, cwd=path)
        except GitError:
            raise fail(f"{chosen.label} is not an ancestor of {target.branch}; a revert can only go back in history")
        tree = await git("rev-parse", f"{chosen.id}^{{tree}}", cwd=path)
        return chosen.model_copy(update={"rolled_back_from": tree in rolled_away})

    @activity.defn(name="git.capture_state")
    async def capture_state(self, request: CaptureRequest) -> CaptureResult:
        _, path = await self._worktree(request.service)
        log_file = write_artifact(Path(request.artifact_dir) / "git-log.txt",
                                  await git("log", "--oneline", "-30", cwd=path) + "\n", self._config.secrets())
        return CaptureResult(files=[str(log_file)])

    async def _revert_and_push(self, service: str, good: str, key: str, message: str, *,
                               rolls_back: bool = True) -> str:
        """Revert everything after `good` in one commit tagged with `key`; returns the pushed sha.
        A rollback also names the range it rolled back from, so later runs never pick it again."""
        target, path = await self._worktree(service)
        head_message = await git("log", "-1", "--format=%B", cwd=path)
        if f"{KEY_TRAILER}: {key}" in head_message:
            return await git("rev-parse", "HEAD", cwd=path)  # an earlier attempt pushed it
        head = await git("rev-parse", "HEAD", cwd=path)
        trailers = f"{KEY_TRAILER}: {key}" + (f"\n{RANGE_TRAILER}: {good}..{head}" if rolls_back else "")
        try:
            await git("revert", "--no-commit", f"{good}..HEAD", cwd=path)
            await git("commit", "--quiet", "-m", f"{message}\n\n{trailers}", cwd=path)
            await git("push", "--quiet", "origin", f"HEAD:{target.branch}", cwd=path)
        except GitError as exc:
            await git("revert", "--abort", cwd=path, check=False)
            raise ApplicationError(f"service {service!r}: revert to {good[:10]} could not be pushed: {exc}") from None
        return await git("rev-parse", "HEAD", cwd=path)

    async def _trigger_deploy(self, service: str, sha: str, key: str, config_files: bool = False) -> str:
        """Call the deploy hook or command once per key: claimed in the state store before the
        call, recorded after it succeeds (activities/state.py says what a crash in between does)."""
        async with self._config.state.once("deploy-hook", f"{service}/{key}") as once:
            if not once.done:
                once.record(await self._deploy(service, sha, config_files))
        return once.result if once.done else once.recorded

    async def _deploy(self, service: str, sha: str, config_files: bool = False) -> str:
        target = self._config_target(service) if config_files else self._target(service)
        if target.deploy_hook_url_env:
            url = resolve_secret(target.deploy_hook_url_env, service)
            async with http_client(timeout=30) as client:
                try:
                    response = await client.post(url, params={"sha": sha})
                except httpx.HTTPError as exc:
                    raise ApplicationError(f"deploy hook unreachable: {type(exc).__name__}") from None
            if response.status_code >= 300:
                raise ApplicationError(f"deploy hook answered HTTP {response.status_code}")
            how = f"deploy hook HTTP {response.status_code}"
        elif target.deploy_command:
            _, path = await self._worktree(service, config_files)
            process = await asyncio.create_subprocess_exec(
                *target.deploy_command, cwd=path, env={**os.environ, "ROLLBACK_COMMIT": sha},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await process.communicate()
            if process.returncode != 0:
                raise ApplicationError(f"deploy command exited {process.returncode}: "
                                       f"{output.decode(errors='replace')[-300:]}")
            how = "deploy command exit 0"
        else:
            how = "no deploy trigger configured; the platform deploys on push"
        return how

    @activity.defn(name="git.execute")
    async def execute(self, request: ExecuteRequest) -> ExecuteResult:
        return await with_heartbeats(self._execute(request), {"reverting": request.service})

    async def _execute(self, request: ExecuteRequest) -> ExecuteResult:
        sha = await self._revert_and_push(
            request.service, request.target.id, request.rollback_key,
            f"Roll back to {request.target.label}\n\n{request.reason}",
        )
        how = await self._trigger_deploy(request.service, sha, request.rollback_key)
        return ExecuteResult(provider="git", details={"revert_commit": sha, "deploy": how, "expected_version": sha})

    @activity.defn(name="git.undo")
    async def undo(self, request: UndoRequest) -> ExecuteResult:
        return await with_heartbeats(self._undo(request), {"putting back": request.service})

    async def _undo(self, request: UndoRequest) -> ExecuteResult:
        """Put the pre-rollback tree back with a new commit (history is never rewritten)."""
        key = f"undo:{request.rollback_key}"
        target, path = await self._worktree(request.service)
        head = await git("rev-parse", "HEAD", cwd=path)
        if head == request.current.id:
            return ExecuteResult(provider="git", details={"unchanged": head})
        sha = await self._revert_and_push(request.service, request.current.id, key,
                                          f"Undo failed rollback: restore {request.current.label}", rolls_back=False)
        how = await self._trigger_deploy(request.service, sha, key)
        return ExecuteResult(provider="git", details={"restore_commit": sha, "deploy": how})

    # -- config files (runbook 000 "Configuration Rollback") ---------------------------------------
    @activity.defn(name="git.config_plan")
    async def config_plan(self, request: ConfigPlanRequest) -> ConfigPlan:
        """Which of the paths differ between the good commit and the head (names and blob ids only)."""
        target, path = await self._worktree(request.service, config_files=True)
        paths = request.paths or self._config.service(request.service).config_files.paths
        for name in paths:
            if name.startswith("/") or ".." in Path(name).parts:
                raise fail(f"config path {name!r} must be relative to the repository root; nothing was changed")
        try:
            commit = await git("rev-parse", "--verify", "--quiet", f"{request.commit}^{{commit}}", cwd=path)
        except GitError:
            raise fail(f"commit {request.commit!r} not found on {target.branch} of {target.repo}; nothing was "
                       "changed", kind="CommitUnknown") from None
        head = await git("rev-parse", "HEAD", cwd=path)
        try:
            await git("merge-base", "--is-ancestor", commit, head, cwd=path)
        except GitError:
            raise fail(f"commit {commit[:10]} is not on {target.branch}; config files are reverted to a commit of "
                       "the branch's own history", kind="CommitUnknown") from None

        async def blob(rev: str, name: str) -> str:
            listed = await git("ls-tree", rev, "--", name, cwd=path)
            return listed.split()[2] if listed else ""

        changed, blobs = [], {}
        for name in paths:
            then, now = await blob(commit, name), await blob(head, name)
            if not then and not now:
                if request.paths:  # named on purpose: a typo must not pass as "nothing to revert"
                    raise fail(f"{name} exists neither at {commit[:10]} nor at the head of {target.branch}; check "
                               "the path; nothing was changed")
                continue  # a configured default this repository does not use (next.config.js in a non-Next app)
            blobs[name] = then
            if then != now:
                changed.append(name)
        return ConfigPlan(service=request.service, commit=commit, head=head, changed=changed, blobs=blobs)

    @activity.defn(name="git.config_revert")
    async def config_revert(self, request: ConfigRevertRequest) -> ExecuteResult:
        return await with_heartbeats(self._config_revert(request), {"reverting config of": request.service})

    async def _config_revert(self, request: ConfigRevertRequest) -> ExecuteResult:
        """The changed files as they were at the good commit, in ONE commit (trailers: our key and
        the range it rolls back from), pushed, then the deploy triggered once."""
        plan, key = request.plan, request.change_key
        target, path = await self._worktree(request.service, config_files=True)
        head = await git("rev-parse", "HEAD", cwd=path)
        if f"{KEY_TRAILER}: {key}" not in await git("log", "-1", "--format=%B", cwd=path):
            try:
                for name in plan.changed:
                    if plan.blobs.get(name):
                        await git("checkout", plan.commit, "--", name, cwd=path)
                    else:  # the file did not exist then
                        await git("rm", "--quiet", "--ignore-unmatch", "--", name, cwd=path)
                await git("commit", "--quiet", "-m", f"Revert {', '.join(plan.changed)} to {plan.commit[:10]}\n\n"
                          f"{request.reason}\n\n{KEY_TRAILER}: {key}\n{RANGE_TRAILER}: {plan.commit}..{head}", cwd=path)
                await git("push", "--quiet", "origin", f"HEAD:{target.branch}", cwd=path)
            except GitError as exc:
                await git("reset", "--quiet", "--hard", head, cwd=path, check=False)
                raise ApplicationError(f"service {request.service!r}: config revert to {plan.commit[:10]} could not be "
                                       f"pushed: {exc}") from None
        sha = await git("rev-parse", "HEAD", cwd=path)
        how = await self._trigger_deploy(request.service, sha, key, config_files=True)
        return ExecuteResult(provider="git", details={"revert_commit": sha, "deploy": how, "expected_version": sha})

    @activity.defn(name="git.config_undo")
    async def config_undo(self, request: ConfigRevertRequest) -> ExecuteResult:
        return await with_heartbeats(self._config_undo(request), {"putting config back": request.service})

    async def _config_undo(self, request: ConfigRevertRequest) -> ExecuteResult:
        """Revert our config commit with a new one (history is never rewritten), deploy that."""
        key, undo_key = request.change_key, f"undo:{request.change_key}"
        target, path = await self._worktree(request.service, config_files=True)
        ours = await git("log", "-50", "--format=%H", f"--grep={KEY_TRAILER}: {key}", "--fixed-strings", cwd=path)
        if not ours:
            return ExecuteResult(provider="git", details={"unchanged": "the config revert was never pushed"})
        if f"{KEY_TRAILER}: {undo_key}" not in await git("log", "-1", "--format=%B", cwd=path):
            try:
                await git("revert", "--no-commit", ours.split()[0], cwd=path)
                await git("commit", "--quiet", "-m", f"Undo failed rollback: config files back as of "
                          f"{request.plan.head[:10]}\n\n{KEY_TRAILER}: {undo_key}", cwd=path)
                await git("push", "--quiet", "origin", f"HEAD:{target.branch}", cwd=path)
            except GitError as exc:
                await git("revert", "--abort", cwd=path, check=False)
                raise ApplicationError(f"service {request.service!r}: undoing the config revert failed: {exc}") from None
        sha = await git("rev-parse", "HEAD", cwd=path)
        how = await self._trigger_deploy(request.service, sha, undo_key, config_files=True)
        return ExecuteResult(provider="git", details={"restore_commit": sha, "deploy": how, "expected_version": sha})
