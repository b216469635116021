"""The `cl` command line: a thin layer over cl_assets.core (and, for pipelines, the Dagster graph)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich import box
from rich.table import Column, Table

from cl_assets.settings import get_settings

app = typer.Typer(help="CL: continuous learning for chat models.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
registry_app = typer.Typer(help="Snapshots, adapters and deployments.", invoke_without_command=True)
app.add_typer(registry_app, name="registry")
export_app = typer.Typer(help="Write CL's data out in other tools' formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")

console = Console(stderr=True)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def _listing(*columns: str | Column) -> Table:
    """A table for listings: no side borders, so it stays readable in an 80-column terminal."""
    return Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False, expand=False)


def _id_column(header: str) -> Column:
    # Ids are what people copy (e.g. for `cl rollback --to`): never cut or wrapped.
    return Column(header, no_wrap=True, overflow="ignore", min_width=15)


def _ingestor():  # type: ignore[no-untyped-def]
    from cl_assets.core.identity import SaltMismatchError
    from cl_assets.core.ingest import Ingestor

    try:
        return Ingestor(get_settings())
    except SaltMismatchError as exc:
        raise _fail(str(exc)) from None


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="JSONL files, one interaction a line (see README).")],
    export: Annotated[bool, typer.Option(help="Refresh data/ingestion/raw_interactions.jsonl afterwards.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file instead of the table.")] = False,
) -> None:
    """Import interactions: sanitize, hash user ids, store; bad lines go to quarantine."""
    ingestor = _ingestor()
    table = _listing("file", Column("lines", justify="right"), Column("new", justify="right"), Column("dupes", justify="right"),
                     Column("quarantined", justify="right"), Column("PII found", overflow="fold"))  # fmt: skip
    reports = []
    for path in files:
        if not path.is_file():
            raise _fail(f"no such file: {path}")
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task(f"ingest {path.name}", total=path.stat().st_size)
            report = ingestor.import_jsonl(path, progress=lambda done: bar.update(task, completed=done))
        reports.append({"file": str(path), "lines": report.lines, "accepted": report.accepted, "duplicates": report.duplicates,
                        "quarantined": report.quarantined, "quarantine_path": str(report.quarantine_path) if report.quarantine_path else None,
                        "pii_counts": dict(report.pii_counts)})  # fmt: skip
        pii = ", ".join(f"{k}={v}" for k, v in sorted(report.pii_counts.items())) or "-"
        table.add_row(path.name, str(report.lines), str(report.accepted), str(report.duplicates), str(report.quarantined), pii)
        if report.quarantine_path:
            console.print(f"[yellow]{report.quarantined} line(s) quarantined[/yellow] with reasons in {report.quarantine_path}")
    if export:
        ingestor.export_sanitized()
    if as_json:
        typer.echo(json.dumps({"files": reports, "interactions_in_store": ingestor.store.count_interactions()}))
        return
    Console().print(table)
    Console().print(f"interactions in store: {ingestor.store.count_interactions()}")


@app.command()
def sanitize(
    file: Annotated[str, typer.Argument(help="Text file to sanitize, or - for standard input.")] = "-",
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Input is JSONL with a `text` field; `pii_types` is added.")] = False,
) -> None:
    """Print FILE with PII replaced by typed placeholders, line by line, in order."""
    from cl_assets.core.pii import sanitize as sanitize_text

    source = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115 - closed below
    out = sys.stdout
    bad = 0
    try:
        for line_no, raw in enumerate(source, start=1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not jsonl:
                out.write(sanitize_text(text).text + "\n")
                continue
            try:
                obj = json.loads(text)
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ValueError("expected an object with a string `text` field")
            except ValueError as exc:
                bad += 1
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                out.write(json.dumps({"error": reason, "line": line_no}) + "\n")
                continue
            result = sanitize_text(obj["text"])
            obj["text"], obj["pii_types"] = result.text, list(result.pii_types)
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        out.flush()
    if bad:
        console.print(f"[yellow]{bad} line(s) were not JSON objects with a `text` field[/yellow]")
        raise typer.Exit(code=1)


@app.command()
def feedback(
    interaction_id: Annotated[str, typer.Argument(help="Interaction id.")],
    verdict: Annotated[str, typer.Argument(help="y (helpful), n (not helpful) or clear.")],
) -> None:
    """Mark an interaction helpful (y) or not (n)."""
    from cl_assets.core.store import UnknownInteractionError

    values = {"y": True, "yes": True, "n": False, "no": False, "clear": None}
    if verdict.lower() not in values:
        raise _fail("verdict must be y, n or clear")
    try:
        _ingestor().record_feedback(interaction_id, values[verdict.lower()])
    except UnknownInteractionError as exc:
        raise _fail(str(exc)) from None
    Console().print(f"recorded: {interaction_id} → {verdict}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest version."""
    from cl_assets.core.store.engine import current_revision, make_engine, upgrade

    settings = get_settings()
    engine = make_engine(settings.db_url)
    upgrade(engine)
    Console().print(f"schema at revision {current_revision(engine)} ({engine.url.render_as_string(hide_password=True)})")
    engine.dispose()


def _store_and_registry():  # type: ignore[no-untyped-def]
    from cl_assets.core.registry import Registry
    from cl_assets.core.store import Store

    settings = get_settings()
    store = Store.from_settings(settings)
    return settings, store, Registry(settings, store)


@export_app.command("snapshot")
def export_snapshot_command(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id (YYYYMMDD_HHMMSS).")],
    fmt: Annotated[str, typer.Option("--format", help="openai (messages, with weight) or sharegpt (conversations).")] = "openai",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: data/exports/).")] = None,
) -> None:
    """Write a snapshot as OpenAI chat fine-tuning JSONL or ShareGPT JSONL."""
    from cl_assets.core.export import ExportError, export_snapshot
    from cl_assets.core.store import Store

    settings = get_settings()
    try:
        path = export_snapshot(settings, Store.from_settings(settings), snapshot_id, fmt, output)
    except (ExportError, ValueError) as exc:
        raise _fail(str(exc)) from None
    Console().print(f"snapshot {snapshot_id} written as {fmt} to {path}")


@app.command("eval")
def eval_command(
    adapter: Annotated[str, typer.Option(help="Snapshot id of an adapter, `deployed`, or `none` for the base model.")] = "deployed",
    file: Annotated[Path | None, typer.Option(help="A {prompt, keywords} JSONL file (default: data/qa_eval.jsonl).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Score the base model or an adapter on a keyword QA file (greedy decoding)."""
    from cl_assets.core.evaluation import QAFormatError, evaluate_model, format_report, load_qa
    from cl_assets.core.model.precision import serving_adapters
    from cl_assets.core.registry import RegistryError

    settings, _, registry = _store_and_registry()
    try:
        items = load_qa(file or settings.taught_qa_path)
        adapter_id = registry.current().adapter_id if adapter == "deployed" else None if adapter == "none" else adapter
        path = registry.verified_path(adapter_id) if adapter_id else None
    except (QAFormatError, RegistryError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    adapters = serving_adapters(settings, settings)  # in the chat's precision, as the gate judges
    if adapter_id and path:
        adapters.ensure_loaded(adapter_id, path)
    with Progress(console=console, transient=True) as bar:
        bar.add_task(f"evaluating {adapter_id or 'base model'} on {len(items)} prompts", total=None)
        result = evaluate_model(adapters, items, adapter_id, settings.eval_max_new_tokens, settings.system_prompt)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        Console().print(format_report(result))


@app.command()
def pipeline(
    curate: Annotated[bool, typer.Option("--curate", help="Curate a new snapshot.")] = False,
    train: Annotated[bool, typer.Option("--train", help="Train an adapter on it.")] = False,
    evaluate: Annotated[bool, typer.Option("--eval", help="Evaluate it against the deployed one and the base.")] = False,
    deploy: Annotated[bool, typer.Option("--deploy", help="Deploy it if the gates pass.")] = False,
    note: Annotated[str, typer.Option(help="Why; stored with the snapshot and the deployment.")] = "",
    snapshot: Annotated[str | None, typer.Option(help="Snapshot id (default: new for --curate, else the latest).")] = None,
) -> None:
    """Materialize cycle steps in process on the project's Dagster instance (the UI shows the run)."""
    from cl_assets.core.snapshot import new_snapshot_id

    steps = [name for name, on in (("curate", curate), ("train", train), ("eval", evaluate), ("deploy", deploy)) if on]
    if not steps:
        raise _fail("choose at least one of --curate --train --eval --deploy")
    settings, store, _ = _store_and_registry()
    if snapshot is None:
        latest = store.latest_snapshot()
        if curate:
            snapshot = new_snapshot_id()
        elif latest is None:
            raise _fail("there is no snapshot yet; run with --curate")
        else:
            snapshot = latest.id
    _run_cycle(settings, snapshot, steps, note)


def _run_cycle(settings, snapshot_id: str, steps: list[str], note: str, overrides: dict | None = None) -> None:  # type: ignore[no-untyped-def]
    """`overrides`: settings fields the run's resources take on top of the `CL_*` environment."""
    from cl_assets.defs.resources import SettingsResource
    from cl_assets.defs.runner import run_steps

    console.print(f"[bold]snapshot {snapshot_id}[/bold]: {' → '.join(steps)}")
    resource = SettingsResource(overrides_json=json.dumps(overrides)) if overrides else None
    run = run_steps(settings, snapshot_id, steps, note=note, settings_resource=resource)
    if run.failed_checks:
        console.print(f"[yellow]failed checks:[/yellow] {', '.join(run.failed_checks)}")
    if not run.success:
        raise _fail(f"run {run.run_id} failed: {run.error}")
    Console().print(f"run {run.run_id} succeeded for snapshot {snapshot_id}")


@app.command()
def rollback(
    steps: Annotated[int, typer.Option(help="How many adapters back to go.")] = 1,
    to: Annotated[str | None, typer.Option(help="Snapshot id of the adapter to put back.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the deployment history).")] = "rollback from the CLI",
    force: Annotated[bool, typer.Option(help="Deploy even if that adapter's gate failed.")] = False,
) -> None:
    """Re-materialize an older deployed_adapter partition (never retrains or re-evaluates)."""
    from cl_assets.core.registry import RegistryError
    from cl_assets.defs.runner import run_steps

    settings, _, registry = _store_and_registry()
    try:
        target = registry.rollback_target(steps=steps, to=to)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    run = run_steps(settings, target, ["deploy"], deploy_config={"actor": "cli", "reason": reason, "force": force})
    if not run.success:
        raise _fail(f"rollback to {target} failed: {run.error}")
    Console().print(f"rolled back: {target} now serves (run {run.run_id})")


@registry_app.callback()
def registry_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as one JSON object.")] = False,
) -> None:
    """List snapshots and adapters with their eval results and which one is deployed.

    At 80 columns the table keeps the full snapshot ids and drops the adapter's parent and
    training mode; a wider terminal (or --json) shows them too."""
    if ctx.invoked_subcommand is not None:
        return
    _, _, registry = _store_and_registry()
    rows = registry.describe()
    deployed = registry.current().adapter_id
    if as_json:
        typer.echo(json.dumps({"deployed": deployed, "snapshots": rows}, default=str))
        return
    out = Console()
    wide = out.width >= 120
    extra = [_id_column("parent"), Column("mode", no_wrap=True)] if wide else []
    table = _listing(_id_column("snapshot"), Column("rows", justify="right"), Column("taught", justify="right"),
                     Column("general", justify="right"), "gate", "serves", *extra, Column("note", overflow="fold"))  # fmt: skip
    for r in rows:
        pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
        gate = "-" if r["gate_passed"] is None else ("pass" if r["gate_passed"] else "FAIL")
        if r["tainted"]:
            gate += " tainted"
        cells = [r["snapshot"], str(r["rows"]), pct(r["accuracy"]), pct(r["general_accuracy"]), gate, "◀" if r["deployed"] else ""]
        if wide:
            cells += [r["parent"] or "-", r["mode"] or "-"]
        table.add_row(*cells, r["note"] or "")
    out.print(table)
    out.print(f"deployed: {deployed or 'base model'}")


@registry_app.command("history")
def registry_history(
    as_json: Annotated[bool, typer.Option("--json", help="Print the history as a JSON list.")] = False,
) -> None:
    """The append-only deployment history: who deployed what, when and why."""
    _, _, registry = _store_and_registry()
    history = registry.history()
    if as_json:
        typer.echo(json.dumps(history, default=str))
        return
    table = _listing(Column("#", justify="right"), Column("time (UTC)", no_wrap=True), _id_column("adapter"), "actor",
                     "forced", Column("reason", overflow="fold"))  # fmt: skip
    for h in history:
        when = h["time"][:16].replace("T", " ")  # minutes are enough to read; --json has the rest
        table.add_row(str(h["id"]), when, h["adapter"] or "base", h["actor"], "yes" if h["forced"] else "", h["reason"])
    Console().print(table)


@app.command()
def demo(
    deploy: Annotated[bool, typer.Option(help="Deploy the adapter if it passes the gates.")] = True,
    second_batch: Annotated[bool, typer.Option(
        "--second-batch", help="The demo's second month: new facts and changed ones (a lot moved, a new shipping "
        "threshold, new payment terms), evaluated on its own taught set; run after a first `cl demo`.")] = False,
) -> None:
    """Ingest the demo conversations and run one full learning cycle end to end."""
    from cl_assets.core.snapshot import new_snapshot_id

    settings = get_settings()
    ingestor = _ingestor()
    source, overrides = settings.demo_path, None
    if second_batch:
        source = settings.demo_second_path
        if settings.qa_taught_file is None:  # the second month's truths, unless the user chose a set
            overrides = {"qa_taught_file": str(settings.demo_second_qa_path)}
    report = ingestor.import_jsonl(source)
    ingestor.export_sanitized()
    console.print(f"demo data: {report.accepted} new, {report.duplicates} already there, {report.quarantined} quarantined")
    steps = ["curate", "train", "eval"] + (["deploy"] if deploy else [])
    _run_cycle(settings, new_snapshot_id(), steps, "cl demo --second-batch" if second_batch else "cl demo", overrides)


@app.command()
def chat(
    web: Annotated[bool, typer.Option("--web", help="Serve the Gradio app and the OpenAI-compatible API (/v1) instead of the terminal chat.")] = False,
    host: Annotated[str | None, typer.Option(help="Address for --web (default CL_CHAT_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port for --web (default CL_CHAT_PORT, 7860).")] = None,
) -> None:
    """Chat with the deployed adapter; mark answers helpful (y) or not (n)."""
    from cl_chat.cli import run_chat

    run_chat(get_settings(), web=web, host=host, port=port)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Dagster UI port.")] = 3000,
    chat_port: Annotated[int | None, typer.Option(help="Chat port (default CL_CHAT_PORT).")] = None,
    with_chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Serve the chat too.")] = True,
) -> None:
    """Serve the Dagster UI (127.0.0.1:3000) and the chat (127.0.0.1:7860) until Ctrl-C."""
    from cl_assets.launcher import serve

    raise typer.Exit(code=serve(get_settings(), dagster_port=port, chat_port=chat_port, with_chat=with_chat))


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Dagster UI port.")] = 3000,
    chat_port: Annotated[int | None, typer.Option(help="Chat port (default CL_CHAT_PORT).")] = None,
) -> None:
    """First start: convert the base model and ingest the demo data; then serve UI and chat until Ctrl-C."""
    from cl_assets.core.model import ensure_base_model
    from cl_assets.launcher import serve

    settings = get_settings()
    console.print(f"base model: {ensure_base_model(settings)}")
    ingestor = _ingestor()
    if ingestor.store.count_interactions() == 0:
        report = ingestor.import_jsonl(settings.demo_path)
        ingestor.export_sanitized()
        console.print(f"first start: ingested {report.accepted} demo interactions")
    console.print(f"Dagster UI on http://127.0.0.1:{port}, chat on http://{settings.chat_host}:{chat_port or settings.chat_port} — Ctrl-C stops both")
    raise typer.Exit(code=serve(settings, dagster_port=port, chat_port=chat_port))


@app.command("forget-user")
def forget_user_command(
    user_id: Annotated[str, typer.Argument(help="The user's id as the chat or the import gave it (found by its salted hash).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Erase a user's interactions and feedback; taint the snapshots and adapters built from them."""
    from cl_assets.core.erasure import forget_user
    from cl_assets.core.identity import SaltMismatchError

    try:
        result = forget_user(get_settings(), user_id)
    except (SaltMismatchError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
    else:
        Console().print(f"erased {result.interactions} interaction(s) and {result.feedback_events} feedback event(s)")
        Console().print(f"tainted snapshots: {', '.join(result.tainted_snapshots) or '-'}")
        Console().print(f"tainted adapters: {', '.join(result.tainted_adapters) or '-'}")
    if result.deployed_tainted:
        undo = (
            f"cl rollback --to {result.rollback_to} --reason 'erasure'"
            if result.rollback_to
            else "cl pipeline --curate --train --eval --deploy --note 'rebuild after erasure'"
        )
        console.print(
            f"[yellow]warning:[/yellow] the deployed adapter {result.deployed_tainted} was trained on erased data "
            f"and still serves. To stop serving it run: {undo}"
        )


if __name__ == "__main__":  # pragma: no cover
    app()
