"""The ``sibnn`` command: bring the embedded stack up, submit and watch experiments, print the tables.

    sibnn up                      # Ray head (token auth) + MLflow (SQLite) + API as child processes; Ctrl-C stops
    sibnn demo                    # up + the mnist5k preset + progress + results and claims tables + MLflow UI link
    sibnn submit spec.json --wait # or: sibnn submit --preset digits --wait
    sibnn status [ID] · sibnn results ID · sibnn logs ID [-f] · sibnn cancel ID · sibnn table paper-comparison
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from console.client import Api, ApiError, home
from service.schemas import ui_link

app = typer.Typer(help="Reproduce the Si-BNN paper's tables on Ray; runs recorded in MLflow.",
                  no_args_is_help=True, add_completion=False)
# A terminal's own width; 200 columns when the output goes to a pipe or a file (rich would assume 80 and cut the
# results table's trial names to "di…"), unless COLUMNS says otherwise.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
STATE_STYLE = {"FINISHED": "green", "SUCCEEDED": "green", "RUNNING": "cyan", "PENDING": "dim", "FAILED": "red",
               "KILLED": "yellow", "CANCELLED": "yellow"}


def _fail(msg: str, code: int = 1):
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def _api(url: Optional[str], token: Optional[str]) -> Api:
    return Api(url, token)


UrlOpt = typer.Option(None, "--api-url", envvar="SIBNN_API_URL", help="API address (default: the stack of `sibnn up`)")
TokenOpt = typer.Option(None, "--token", envvar="SIBNN_API_TOKEN", help="API bearer token")


# --- the stack ----------------------------------------------------------------------------------------------------

def _start_stack(state: Path, port: int, mlflow_port: Optional[int], host: str, num_cpus: Optional[int],
                 settings: Optional[dict] = None):
    from console.stack import Stack

    stack = Stack(state, api_port=port, mlflow_port=mlflow_port, host=host, num_cpus=num_cpus,
                  say=lambda m: console.print(f"[dim]{m}[/dim]", highlight=False), settings=settings)
    info = stack.start()
    console.print(f"[bold green]sibnn is up[/bold green]\n  API      {info.api_url}  (OpenAPI page: "
                  f"{info.api_url}/docs)"
                  f"\n  MLflow   {info.mlflow_url}\n  Ray      {info.ray_dashboard_url}  (token in "
                  f"{info.ray_auth_token_path})\n  API token in {state / 'api_token'}; state in {state}")
    return stack, info


def _wait_for_signal(stack) -> None:
    """Supervise the stack (a crashed API or MLflow is restarted) until Ctrl-C or SIGTERM, or the Ray head exits."""
    stop = {"now": False}

    def handler(signum, frame):
        stop["now"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop["now"]:
            why = stack.supervise()
            if why:
                console.print(f"[red]{why}[/red]", highlight=False)
                break
            time.sleep(0.5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@app.command()
def up(port: int = typer.Option(8000, help="API port"), host: str = typer.Option("127.0.0.1", help="API bind address"),
       mlflow_port: Optional[int] = typer.Option(None, help="MLflow port (default: a free one)"),
       num_cpus: Optional[int] = typer.Option(None, help="CPUs the Ray head offers (default: all)"),
       state: Path = typer.Option(None, "--home", envvar="SIBNN_HOME", help="state folder (default ~/.sibnn)")):
    """Start the embedded stack (Ray head, MLflow, API) as child processes and keep it up: a crashed API or MLflow
    is restarted (the Ray head and its sweeps are left alone). Ctrl-C or SIGTERM shuts it all down. The SIBNN_*
    variables of this shell reach the Ray head and the API."""
    state = (state or home()).expanduser().resolve()
    settings = {k: v for k, v in os.environ.items() if k.startswith("SIBNN_")}
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM while starting: stop what has started, like Ctrl-C
    try:
        stack, _ = _start_stack(state, port, mlflow_port, host, num_cpus, settings)
    except (RuntimeError, TimeoutError, OSError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("interrupted while starting; stopped.")
        raise typer.Exit(130)
    console.print("[dim]Ctrl-C stops everything.[/dim]")
    try:
        _wait_for_signal(stack)
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):  # the shutdown itself is bounded (SIGTERM, then SIGKILL)
            signal.signal(s, signal.SIG_IGN)
        console.print("[dim]stopping the API, MLflow and the Ray head…[/dim]")
        stack.stop()
        console.print("stopped.")


# --- experiments --------------------------------------------------------------------------------------------------

def _load_spec(path: Optional[Path], preset_name: Optional[str], epochs: Optional[int]) -> dict:
    from jobs.presets import PRESETS

    if preset_name:
        if preset_name not in PRESETS:
            _fail(f"unknown preset {preset_name!r}; available: {', '.join(PRESETS)}")
        spec = json.loads(json.dumps(PRESETS[preset_name]))
    elif path:
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            _fail(f"cannot read the spec {path}: {e}")
    else:
        _fail("give a spec file or --preset NAME")
    if epochs is not None:
        spec.setdefault("recipe", {})["epochs"] = epochs
    return spec


def _show_problem(e: ApiError) -> None:
    console.print(f"[red]{e}[/red]")
    for err in e.problem.get("errors") or []:
        console.print(f"  [bold]{err.get('field')}[/bold]: {err.get('message')}")


@contextlib.contextmanager
def _exit_on_api_error():
    """An API error becomes its problem details on the console and exit status 1, not a traceback."""
    try:
        yield
    except ApiError as e:
        _show_problem(e)
        raise typer.Exit(1) from None


@app.command()
def submit(spec_file: Optional[Path] = typer.Argument(None, help="spec JSON file"),
           preset: Optional[str] = typer.Option(None, help="a preset instead of a file (e.g. digits)"),
           epochs: Optional[int] = typer.Option(None, help="override recipe.epochs"),
           wait: bool = typer.Option(False, "--wait", help="follow progress until the experiment ends"),
           url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """Submit an experiment spec (validated by the API; errors name the field)."""
    api = _api(url, token)
    with _exit_on_api_error():
        exp = api.submit(_load_spec(spec_file, preset, epochs), idempotency_key=str(uuid.uuid4()))
    console.print(f"experiment [bold]{exp['id']}[/bold] submitted ({exp['n_trials']} trials): {exp['status']}")
    if exp.get("gpu_hours"):
        console.print(gpu_hours_line(exp["gpu_hours"]), highlight=False)
    if wait:
        final = watch(api, exp["id"])
        _print_results(api, exp["id"])
        raise typer.Exit(0 if final == "SUCCEEDED" else 1)


def gpu_hours_line(est: dict) -> str:
    """The API's GPU-hours estimate as one line: per trial (the costliest), in total, and what it assumes."""
    return (f"estimated GPU time: up to {est['per_trial_max']:.3g} GPU-hours per trial, {est['total']:.3g} in all "
            f"({est['assumes']})")


TRIAL_DONE = ("FINISHED", "FAILED", "KILLED")


def trial_events(seen: dict[str, tuple], trials: list[dict]) -> list[str]:
    """Progress as log lines: what changed in each trial since the last poll — started, epoch k/N with top-1,
    finished (with its state). ``seen`` (trial id → (state, epoch)) is updated in place. An epoch that starts and
    ends between two polls shows as the later one."""
    lines = []
    for t in trials:
        tid, state, epoch = t["trial_id"], t["state"], t["epoch"]
        old_state, old_epoch = seen.get(tid, ("PENDING", 0))
        top1 = t["metrics"].get("val_top1")
        if old_state == "PENDING" and state != "PENDING":
            lines.append(f"{tid}: started")
        if epoch > old_epoch:
            lines.append(f"{tid}: epoch {epoch}/{t['epochs']} top-1 {_fmt(top1)}")
        if state in TRIAL_DONE and old_state not in TRIAL_DONE:
            lines.append(f"{tid}: {state.lower()}" + (f", top-1 {_fmt(top1)}" if top1 is not None else ""))
        seen[tid] = (state, epoch)
    return lines


def _poll(api: Api, exp_id: str, poll_s: float, on_update) -> dict:
    """Poll the experiment until it ends, calling ``on_update(exp)`` after every successful poll."""
    while True:
        try:
            exp = api.get(exp_id)
        except ApiError as e:
            console.print(f"[yellow]{e}; retrying[/yellow]")
            time.sleep(poll_s)
            continue
        on_update(exp)
        if exp["status"] in TERMINAL:
            return exp
        time.sleep(poll_s)


def watch(api: Api, exp_id: str, poll_s: float = 2.0) -> str:
    """Progress: on a terminal one live bar per trial (epochs done); otherwise (a pipe, a log file) one line per
    trial event — started, epoch k/N with top-1, finished."""
    if console.is_terminal:
        exp = _watch_bars(api, exp_id, poll_s)
    else:
        seen: dict[str, tuple] = {}
        last = {"status": None}

        def log(exp):
            if exp["status"] != last["status"] and exp["status"] not in TERMINAL:  # the end is printed below
                console.print(f"experiment {exp_id}: {exp['status']}", highlight=False)
                last["status"] = exp["status"]
            for line in trial_events(seen, exp.get("trials") or []):
                console.print(line, highlight=False)
            sys.stdout.flush()

        exp = _poll(api, exp_id, poll_s, log)
    style = STATE_STYLE.get(exp["status"], "white")
    console.print(f"experiment {exp_id}: [{style}]{exp['status']}[/{style}]" +
                  (f" — {exp['reason']}" if exp.get("reason") else ""))
    return exp["status"]


def _watch_bars(api: Api, exp_id: str, poll_s: float) -> dict:
    progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[state]:<9} top-1 {task.fields[top1]}"), TimeElapsedColumn(),
                        console=console)
    bars: dict[str, int] = {}

    def update(exp):
        for t in exp.get("trials") or []:
            if t["trial_id"] not in bars:
                bars[t["trial_id"]] = progress.add_task(t["trial_id"], total=t["epochs"], state="", top1="–")
            top1 = t["metrics"].get("val_top1")
            style = STATE_STYLE.get(t["state"], "white")
            progress.update(bars[t["trial_id"]], completed=t["epoch"], state=f"[{style}]{t['state']}[/{style}]",
                            top1=f"{top1:.1f}" if top1 is not None else "–")

    with Live(progress, console=console, refresh_per_second=4):
        return _poll(api, exp_id, poll_s, update)


def _fmt(v, f=".2f"):
    return "–" if v is None else format(v, f)


def _print_results(api: Api, exp_id: str) -> None:
    res = api.results(exp_id)
    crops = sorted({r["evaluation"] for r in res["rows"] if r.get("evaluation")})
    t = Table(title=f"results of {exp_id} ({res['status']})",
              caption=("top-1/top-5 on " + "; ".join(crops)) if crops else None)
    for col in ("trial", "binarizer", "ρ", "seed", "state", "epochs", "top-1", "best top-1", "top-5", "sparsity",
                "img/s", "wall s", "packed KB", "CPU ms"):
        t.add_column(col, justify="left" if col in ("trial", "binarizer", "state") else "right")
    for r in res["rows"]:
        t.add_row(r["trial_id"], r["binarizer"], _fmt(r["rho"], "g"), str(r["seed"]), r["state"], str(r["epochs"]),
                  _fmt(r["final_top1"]), _fmt(r["best_top1"]), _fmt(r["final_top5"]), _fmt(r["sparsity"], ".3f"),
                  _fmt(r["images_per_s"], ".0f"), _fmt(r["wall_time_s"], ".1f"),
                  _fmt(r["packed_file_bytes"] / 1024 if r.get("packed_file_bytes") else None, ".0f"),
                  _fmt(r.get("packed_latency_ms"), ".2f"))
    console.print(t)


@app.command()
def status(exp_id: Optional[str] = typer.Argument(None), url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """One experiment with its trials, or the list of experiments."""
    api = _api(url, token)
    with _exit_on_api_error():
        if exp_id:
            exp = api.get(exp_id)
            console.print(f"[bold]{exp['id']}[/bold] {exp['name']}: {exp['status']}"
                          + (f" — {exp['reason']}" if exp.get("reason") else "")
                          + f"  (attempt {exp['attempt']}, Ray {exp['ray_submission_id']})")
            t = Table()
            for col in ("trial", "state", "epoch", "val top-1", "sparsity", "MLflow"):
                t.add_column(col)
            for tr in exp.get("trials") or []:
                m = tr["metrics"]
                t.add_row(tr["trial_id"], tr["state"], f"{tr['epoch']}/{tr['epochs']}", _fmt(m.get("val_top1")),
                          _fmt(m.get("sparsity_mean"), ".3f"), tr["mlflow_url"] or "")
            console.print(t)
        else:
            t = Table(title="experiments")
            for col in ("id", "name", "status", "trials", "created", "reason"):
                t.add_column(col)
            for e in api.list()["items"]:
                t.add_row(e["id"], e["name"], e["status"], str(e["n_trials"]), e["created_at"][:19], e["reason"] or "")
            console.print(t)


@app.command()
def results(exp_id: str, url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """The results table of an experiment (one row per trial)."""
    with _exit_on_api_error():
        _print_results(_api(url, token), exp_id)


@app.command()
def logs(exp_id: str, follow: bool = typer.Option(False, "--follow", "-f"), tail: int = 200,
         url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """The Ray job's log (``-f`` follows it until the job ends)."""
    api = _api(url, token)
    with _exit_on_api_error():
        if follow:
            for chunk in api.follow_logs(exp_id, tail):
                console.out(chunk, end="", highlight=False)
        else:
            console.out(api.logs(exp_id, tail), highlight=False)


def download_trial(row: dict, packed: bool, out: Path, mlflow_uri: str) -> Path:
    """Fetch a results row's best checkpoint (state dict + config) or packed file through MLflow."""
    import mlflow.artifacts

    uri = row.get("packed_uri") if packed else row.get("checkpoint_uri")
    if not uri:
        what = "packed file (Si-BNN trials only)" if packed else "checkpoint"
        raise LookupError(f"trial {row.get('trial_id')} has no {what} in MLflow (state {row.get('state')})")
    out.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(out), tracking_uri=mlflow_uri))


@app.command()
def download(exp_id: str, trial: str = typer.Argument(..., help="trial id, as in `sibnn results`"),
             packed: bool = typer.Option(False, "--packed", help="the bit-packed CPU model instead of the checkpoint"),
             out: Path = typer.Option(Path("."), "--out", "-o", help="folder to write into"),
             mlflow_uri: str = typer.Option("http://127.0.0.1:5000", envvar=["SIBNN_MLFLOW_TRACKING_URI",
                                                                             "MLFLOW_TRACKING_URI"]),
             url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """Download a trial's best checkpoint (state dict + config; ``--packed``: the packed file) from MLflow."""
    with _exit_on_api_error():
        rows = _api(url, token).results(exp_id)["rows"]
    row = next((r for r in rows if r["trial_id"] == trial), None)
    if row is None:
        _fail(f"experiment {exp_id} has no trial {trial}; trials: {', '.join(r['trial_id'] for r in rows)}")
    try:
        path = download_trial(row, packed, out, mlflow_uri)
    except LookupError as e:
        _fail(str(e))
    console.print(f"{path}")


@app.command()
def cancel(exp_id: str, url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """Cancel: the Ray job is stopped, the experiment ends CANCELLED."""
    with _exit_on_api_error():
        exp = _api(url, token).cancel(exp_id)
    console.print(f"experiment {exp_id}: {exp['status']}")


def _print_table(data: dict) -> None:
    rows = data["rows"]
    t = Table(title=data["table"], caption=data.get("note"))
    cols = ["dataset", "arch", "binarizer", "ρ", "seeds", "top-1 (mean ± sd)", "top-5", "sparsity", "evaluated on"]
    if data["table"] == "paper-comparison":
        cols.append("paper top-1")
    for c in cols:
        t.add_column(c)
    def pm(s: dict) -> str:
        if s["mean"] is None:
            return "–"
        return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")

    for r in rows:
        cells = [r["dataset"] or "", r["arch"] or "", r["binarizer"] or "", _fmt(r["rho"], "g"), str(r["n"]),
                 pm(r["final_top1"]), pm(r["final_top5"]),
                 "–" if r["sparsity"]["mean"] is None else f"{r['sparsity']['mean']:.3f}", r.get("evaluation") or "–"]
        if data["table"] == "paper-comparison":
            cells.append(_fmt(r.get("paper_top1"), ".1f"))
        t.add_row(*cells)
    console.print(t)
    if data.get("claims"):
        _print_claims(data["claims"], f"the paper's claims, from the {data['table']} table", data.get("statistics"))


VERDICT_STYLE = {"holds": "[green]holds[/green]", "does not hold": "[red]does not hold[/red]",
                 "not resolved": "[yellow]not resolved[/yellow]"}


def _print_claims(claims: list[dict], title: str, statistics: str | None = None) -> None:
    """One row per claim: where it was checked, the numbers and intervals it rests on, and its verdict (holds /
    does not hold / not resolved, from ``jobs.results`` through the API)."""
    t = Table(title=title, caption=statistics)
    for col in ("claim", "dataset / arch", "ρ", "evidence (difference [95 % interval])", "verdict"):
        t.add_column(col)
    for c in claims:
        evidence = c.get("evidence", "") + (f"; {c['to_resolve']}" if c.get("to_resolve") else "")
        t.add_row(c["claim"], f"{c['dataset']} / {c['arch']}", _fmt(c.get("rho"), "g"), evidence,
                  VERDICT_STYLE.get(c.get("verdict"), c.get("verdict") or ""))
    console.print(t)


@app.command()
def table(name: str = typer.Argument("paper-comparison", help="paper-comparison | rho-ablation"),
          experiment_id: Optional[list[str]] = typer.Option(None, "--experiment-id", "-e"),
          url: Optional[str] = UrlOpt, token: Optional[str] = TokenOpt):
    """A paper table aggregated over seeds, reproduced numbers next to the paper's."""
    with _exit_on_api_error():
        _print_table(_api(url, token).table(name, experiment_id))


DEMO_POLL_S = 1.0  # `sibnn demo`: how often the CLI polls the API and the API polls Ray (default 2 s)


@app.command()
def demo(port: int = typer.Option(8000, help="API port"),
         preset: str = typer.Option("mnist5k", help="the preset to run (mnist5k: real MNIST digits; digits: 8×8)"),
         epochs: Optional[int] = typer.Option(None, help="override the preset's epochs"),
         quick: bool = typer.Option(False, help="a 2-trial, 2-epoch sweep instead of the full preset"),
         keep_up: bool = typer.Option(False, "--keep-up", help="leave the stack running until Ctrl-C"),
         state: Path = typer.Option(None, "--home", envvar="SIBNN_HOME", help="state folder (default ~/.sibnn)")):
    """Bring the stack up, run the mnist5k preset (Si-BNN at ρ 0, 0.3, 1 vs sign-BNN vs FP on real MNIST digits,
    five seeds), show progress, print the results, the paper's claims with their 95 % intervals and verdicts (holds /
    does not hold / not resolved), and the MLflow UI link."""
    from jobs.presets import PRESETS
    from jobs.spec import RHO_DEFAULT

    if preset not in PRESETS:
        _fail(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    if "root" in PRESETS[preset]["dataset"]:
        _fail(f"preset {preset!r} needs a dataset folder; `sibnn demo` runs the embedded presets (mnist5k, digits)")
    state = (state or home()).expanduser().resolve()
    try:
        # The demo's own stack, watched by one client: the API reconciles with Ray every DEMO_POLL_S (default
        # 2 s), so the end of the run is seen within a poll.
        stack, info = _start_stack(state, port, None, "127.0.0.1", None,
                                   settings={"SIBNN_RECONCILE_INTERVAL_S": str(DEMO_POLL_S)})
    except (RuntimeError, TimeoutError, OSError) as e:
        _fail(str(e))
    code = 1
    try:
        api = Api(info.api_url, info.api_token)
        spec = json.loads(json.dumps(PRESETS[preset]))
        if quick:
            spec["grid"].update(binarizer=["sibnn", "sign"], rho=[RHO_DEFAULT], seed=[0])
            spec["recipe"]["epochs"] = 2
        if epochs is not None:
            spec["recipe"]["epochs"] = epochs
        exp = api.submit(spec, idempotency_key=str(uuid.uuid4()))
        console.print(f"submitted [bold]{exp['id']}[/bold]: {spec['name']} ({exp['n_trials']} trials, "
                      f"{spec['recipe']['epochs']} epochs)")
        final = watch(api, exp["id"], poll_s=DEMO_POLL_S)
        exp = api.get(exp["id"])
        _print_results(api, exp["id"])
        _print_table(api.table("paper-comparison", [exp["id"]]))
        if len(spec["grid"]["rho"]) > 1:
            _print_table(api.table("rho-ablation", [exp["id"]]))
        console.print(f"MLflow UI: [bold]{exp.get('mlflow_url') or ui_link(info.mlflow_url)}[/bold]  (this "
                      f"experiment's runs and their val_top1 charts; all experiments: {ui_link(info.mlflow_url)})")
        code = 0 if final == "SUCCEEDED" else 1
        if keep_up:
            console.print("[dim]the stack stays up; Ctrl-C stops it.[/dim]")
            _wait_for_signal(stack)
    except ApiError as e:
        _show_problem(e)
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        console.print("[dim]stopping the stack…[/dim]")
        stack.stop()
    raise typer.Exit(code)


@app.command()
def migrate(database_url: Optional[str] = typer.Option(None, envvar="SIBNN_DATABASE_URL")):
    """Bring the database to the latest schema (Alembic); the API also does this at start-up."""
    # The service's own entry point does it: the console imports no database code (an import-linter contract).
    env = {**os.environ, **({"SIBNN_DATABASE_URL": database_url} if database_url else {})}
    code = subprocess.run([sys.executable, "-m", "service", "migrate"], env=env).returncode
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
