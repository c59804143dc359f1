"""``openimm`` command line: thin parsing over library functions. Every flag has an
``OPENIMM_*`` twin (flags override the environment for that run)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.settings import Settings, load_settings

if TYPE_CHECKING:
    from pipeline.buckets import BucketPolicy

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNHEALTHY = 0, 1, 2, 3
EXIT_CONFIG = 78  # sysexits EX_CONFIG: the configuration is unusable (e.g. an empty key file)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
        }.items()
        if v is not None
    }
    return load_settings().model_copy(update=overrides)


def cmd_api(args: argparse.Namespace) -> int:
    from pipeline.server import run_api

    run_api(_settings(args))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.server import serve

    return serve(_settings(args))


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.server import run_worker, supervise_worker

    settings = _settings(args)
    pool = args.pool or settings.worker_pool
    if not args.no_supervise:
        child = ["-Q", args.queues, "-c", str(args.concurrency or settings.worker_concurrency)]
        child += ["--pool", pool] + (["-n", args.hostname] if args.hostname else [])
        return supervise_worker(settings, child)
    return run_worker(
        settings,
        queues=args.queues,
        concurrency=args.concurrency or settings.worker_concurrency,
        hostname=args.hostname,
        pool=pool,
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline import migrate

    settings = _settings(args)
    if settings.db_url.startswith("sqlite"):
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.db_url)
    print("database is at the latest revision")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    """Each owner's AccessKeyId and AccountId (never a secret)."""
    from pipeline import accounts, credentials

    settings = _settings(args)
    keys = credentials.load_keys(settings)
    ids = accounts.load(settings)
    if not keys:
        print("no access keys: DEV MODE (requests are not authenticated)")
    for key_id in keys:
        print(f"{key_id}\t{ids.of(key_id)}")
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
    try:
        response = httpx.get(f"http://{settings.host}:{settings.port}/healthz", timeout=5)
    except httpx.HTTPError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return EXIT_OK if response.status_code == 200 else EXIT_UNHEALTHY


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the lease invariant: every Running task has a live lease or a queued message."""
    from pipeline import leases
    from pipeline.db import Database

    settings = _settings(args)
    db = Database.from_settings(settings)
    try:
        report = leases.check(settings, db)
    finally:
        db.dispose()
    print(
        json.dumps(
            {
                "Ok": report.ok,
                "Leased": report.leased,
                "Queued": report.queued,
                "Lost": report.lost,
                "LeaseOverdue": report.overdue,
            },
            indent=2,
        )
    )
    return EXIT_OK if report.ok else EXIT_UNHEALTHY


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(_settings(args), stay=False if args.exit else None)


def cmd_pools(args: argparse.Namespace) -> int:
    from pipeline import pools

    settings = _settings(args)
    if args.action == "list":
        print(pools.render(pools.snapshot(settings)))
        return EXIT_OK
    if not args.worker or args.value is None:
        print(
            "usage: openimm pools grow|shrink WORKER N | add-queue|cancel-queue WORKER QUEUE",
            file=sys.stderr,
        )
        return EXIT_USAGE
    print(json.dumps(pools.control(settings, args.action, args.worker, args.value), indent=2))
    return EXIT_OK


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pipeline.client import ImmClient
    from pipeline.credentials import client_key

    settings = _settings(args)
    return ImmClient(f"{settings.host}:{settings.port}", client_key(settings))


def cmd_call(args: argparse.Namespace) -> int:
    from pipeline.client import ClientError

    params = dict(item.split("=", 1) for item in args.params)
    try:
        print(json.dumps(_client(args).call(args.action_name, **params), indent=2))
    except ClientError as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_cp(args: argparse.Namespace) -> int:
    client = _client(args)
    source = Path(args.source)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for path in files:
        rel = path.relative_to(source).as_posix() if source.is_dir() else path.name
        target = args.target + rel if args.target.endswith("/") else args.target
        print(client.put_object(target, path)["URI"])
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    for obj in _client(args).list_objects(args.uri):
        print(f"{obj['Size']:>12}  {obj['URI']}")
    return EXIT_OK


def cmd_buckets(args: argparse.Namespace) -> int:
    """Operator commands on bucket ownership, straight on the database (like ``migrate``)."""
    from pipeline import buckets, migrate
    from pipeline.db import Database
    from pipeline.errors import ImmError
    from pipeline.storage import open_store

    settings = _settings(args)
    needs = {"create": args.owner, "share": args.grantee, "unshare": args.grantee}
    if args.action != "list" and not (args.name and needs[args.action]):
        print(BUCKETS_USAGE, file=sys.stderr)
        return EXIT_USAGE
    db = Database.from_settings(settings)
    migrate.upgrade(settings.db_url)
    policy = buckets.BucketPolicy(db, open_store(settings), settings)
    try:
        return _bucket_action(args, policy)
    except ImmError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        db.dispose()


BUCKETS_USAGE = (
    "usage: openimm buckets list | create NAME --owner AK | "
    "share NAME --with AK [--read-only] | unshare NAME --with AK"
)


def _bucket_action(args: argparse.Namespace, policy: BucketPolicy) -> int:
    from pipeline import buckets

    if args.action == "create":
        made = buckets.create(policy.db, args.name, args.owner)
        print(f"{args.name} {'now belongs' if made else 'already belonged'} to {args.owner}")
    elif args.action == "share":
        access = buckets.READ if args.read_only else buckets.WRITE
        buckets.share(policy, args.name, args.grantee, access)
        print(f"{args.name} shared with {args.grantee} ({access})")
    elif args.action == "unshare":
        buckets.unshare(policy.db, args.name, args.grantee)
        print(f"{args.name} no longer shared with {args.grantee}")
    else:
        print(f"{'BUCKET':<40} {'OWNER':<24} SHARED WITH")
        for view in buckets.listing(policy):
            owner = view.owner if view.claimed else f"{view.owner} (unclaimed)"
            shared = ", ".join(f"{k}:{v}" for k, v in sorted(view.grants.items())) or "-"
            print(f"{view.name:<40} {owner:<24} {shared}")
    return EXIT_OK


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from pipeline.server import run_dispatcher

    return run_dispatcher(_settings(args))


def _rpc(args: argparse.Namespace, action: str, **params: object) -> int:
    from pipeline.client import ClientError

    try:
        result = _client(args).call(action, **{k: v for k, v in params.items() if v})
    except ClientError as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        return EXIT_FAILURE
    result.pop("RequestId", None)
    print(json.dumps(result, indent=2))
    return EXIT_OK


def cmd_topics(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _rpc(args, "ListTopics")
    if args.action == "subscriptions":
        return _rpc(args, "ListSubscriptions", TopicName=args.topic)
    action = {"create": "CreateTopic", "delete": "DeleteTopic"}[args.action]
    return _rpc(args, action, TopicName=args.topic)


def cmd_subscribe(args: argparse.Namespace) -> int:
    return _rpc(
        args,
        "Subscribe",
        TopicName=args.topic,
        SubscriptionName=args.name,
        Endpoint=args.endpoint,
        NotifyContentFormat=args.format,
        NotifyStrategy=args.strategy,
    )


def cmd_unsubscribe(args: argparse.Namespace) -> int:
    return _rpc(args, "Unsubscribe", TopicName=args.topic, SubscriptionName=args.name)


def cmd_subscriptions(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _rpc(args, "ListSubscriptions", TopicName=args.topic)
    if args.action == "delete":
        return _rpc(args, "Unsubscribe", TopicName=args.topic, SubscriptionName=args.name)
    return cmd_subscribe(args)


def cmd_deliveries(args: argparse.Namespace) -> int:
    if args.action == "replay":
        return _rpc(
            args,
            "ReplayDeliveries",
            EventId=args.event,
            Since=args.since,
            Until=args.until,
            DeadOnly="true" if args.dead else None,
        )
    return _rpc(
        args, "ListDeliveries", TopicName=args.topic, EventId=args.event, Status=args.status
    )


def cmd_events(args: argparse.Namespace) -> int:
    """Live view of a topic's messages (polls ListEvents; Ctrl-C to stop)."""
    import time

    from pipeline.client import ClientError

    client, after = _client(args), 0
    try:
        while True:
            try:
                events = client.call("ListEvents", TopicName=args.topic, AfterSeq=after)
            except ClientError as exc:
                print(json.dumps(exc.body, indent=2), file=sys.stderr)
                return EXIT_FAILURE
            for event in events["Events"]:
                after = event["Seq"]
                print(json.dumps(event["Message"], ensure_ascii=False), flush=True)
            if args.once:
                return EXIT_OK
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _notify_parsers(sub: argparse._SubParsersAction) -> None:
    topics = sub.add_parser("topics", help="notification topics: list|create|delete|subscriptions")
    topics.add_argument("action", choices=["list", "create", "delete", "subscriptions"])
    topics.add_argument("topic", nargs="?", default="")
    topics.set_defaults(func=cmd_topics)
    subscribe = sub.add_parser("subscribe", help="push a topic to a webhook URL")
    subscribe.add_argument("topic")
    subscribe.add_argument("name")
    subscribe.add_argument("endpoint")
    subscribe.add_argument("--format", default="JSON", help="JSON | SIMPLIFIED | XML")
    subscribe.add_argument(
        "--strategy",
        default="EXPONENTIAL_DECAY_RETRY",
        help="BACKOFF_RETRY | EXPONENTIAL_DECAY_RETRY | JSON policy",
    )
    subscribe.set_defaults(func=cmd_subscribe)
    unsubscribe = sub.add_parser("unsubscribe", help="remove a subscription")
    unsubscribe.add_argument("topic")
    unsubscribe.add_argument("name")
    unsubscribe.set_defaults(func=cmd_unsubscribe)
    subs = sub.add_parser("subscriptions", help="list|create|delete TOPIC [NAME ENDPOINT]")
    subs.add_argument("action", choices=["list", "create", "delete"])
    subs.add_argument("topic")
    subs.add_argument("name", nargs="?", default="")
    subs.add_argument(
        "endpoint",
        nargs="?",
        default="",
        help="https://… webhook or acs:mns:<region>:<AccountId>:queues/<name>",
    )
    subs.add_argument("--format", default="JSON", help="JSON | SIMPLIFIED | XML")
    subs.add_argument("--strategy", default="EXPONENTIAL_DECAY_RETRY")
    subs.set_defaults(func=cmd_subscriptions)
    deliveries = sub.add_parser("deliveries", help="delivery log; replay by event or time")
    deliveries.add_argument("action", nargs="?", default="list", choices=["list", "replay"])
    deliveries.add_argument("--topic", default="")
    deliveries.add_argument("--event", default="")
    deliveries.add_argument("--status", default="", help="pending | delivered | dead")
    deliveries.add_argument("--since", default="")
    deliveries.add_argument("--until", default="")
    deliveries.add_argument("--dead", action="store_true", help="replay dead-lettered only")
    deliveries.set_defaults(func=cmd_deliveries)
    events = sub.add_parser("events", help="events tail --topic T: live view of messages")
    events.add_argument("action", choices=["tail"])
    events.add_argument("--topic", required=True)
    events.add_argument("--interval", type=float, default=0.5)
    events.add_argument("--once", action="store_true", help="print what is there and exit")
    events.set_defaults(func=cmd_events)


def cmd_index(args: argparse.Namespace) -> int:
    from pipeline import albums

    summary = albums.index_folder(_client(args), Path(args.folder), args.project, args.dataset)
    for err in summary["Errors"]:
        print(f"{err['URI']}: {err['Error']}", file=sys.stderr)
    run = summary["Clustering"]
    print(
        f"indexed {summary['Files'] - len(summary['Errors'])}/{summary['Files']} files; "
        f"clustering {run['Status']}: {run.get('NewClusterCount', 0)} new people, "
        f"{run.get('UpdatedClusterCount', 0)} updated"
    )
    return EXIT_OK if run["Status"] == "Succeeded" else EXIT_FAILURE


def cmd_people(args: argparse.Namespace) -> int:
    from pipeline import albums

    clusters = albums.people(_client(args), args.project, args.dataset)
    if args.json:
        print(json.dumps(clusters, indent=2))
        return EXIT_OK
    print(f"{'CLUSTER':<46} {'NAME':<16} {'PHOTOS':>6} {'FACES':>6}  COVER")
    for c in clusters:
        cover = (c.get("Cover") or {}).get("URI", "")
        print(
            f"{c['ObjectId']:<46} {c['Name'] or '-':<16} {c['ImageCount']:>6} "
            f"{c['FaceCount']:>6}  {cover}"
        )
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """The model store: list | verify [NAME] | install NAME (workers.models.store)."""
    from pipeline.errors import ModelNotInstalled
    from workers.models import store

    settings = _settings(args)
    try:
        if args.action == "list":
            return _print_models(store.entries(settings), args.json)
        if args.action == "verify":
            problems = store.verify(settings, args.name or "")
            for name, problem in problems.items():
                print(f"{name:<22} {problem or 'ok'}")
            return EXIT_OK if not any(problems.values()) else EXIT_FAILURE
        if not args.name:
            print("usage: openimm models install NAME (see: openimm models list)", file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.name} installed and verified in {store.install(settings, args.name)}")
    except ModelNotInstalled as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _print_models(entries: list[Any], as_json: bool) -> int:
    if as_json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return EXIT_OK
    print(f"{'MODEL':<22} {'INSTALLED':<9} {'SIZE':>9}  {'DEVICES':<9} SOURCE / LICENCE")
    for e in entries:
        mark = "yes" if e.installed else "no"
        print(f"{e.name:<22} {mark:<9} {e.size / 1e6:>7.1f}MB  {','.join(e.devices):<9} {e.source}")
        print(f"{'':<53} {e.licence}")
        if not e.installed:
            print(f"{'':<53} missing: {e.problem}; install: {e.install}")
    return EXIT_OK


def cmd_kinds(args: argparse.Namespace) -> int:
    """The job kinds (pipeline.jobs): the README's table with --markdown."""
    from pipeline import jobs

    if args.markdown:
        print(jobs.markdown_table())
        return EXIT_OK
    for k in jobs.KINDS:
        names = ", ".join((*k.actions, *(f"eas:{s}" for s in k.services)))
        print(f"{k.task_type:<26} {k.queue:<10} {k.time_limit:>6}s  {names}")
    return EXIT_OK


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.imm import json_schemas

    print(json.dumps(json_schemas(), indent=2))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openimm", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="OPENIMM_DATA_DIR")
    parser.add_argument("--host", help="OPENIMM_HOST")
    parser.add_argument("--port", type=int, help="OPENIMM_PORT")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: list[tuple[str, Callable[[argparse.Namespace], int], str]] = [
        ("serve", cmd_serve, "API + workers on one machine (embedded default)"),
        ("api", cmd_api, "HTTP API only"),
        ("migrate", cmd_migrate, "apply database migrations"),
        ("healthcheck", cmd_healthcheck, "exit 0 when the API answers"),
        ("doctor", cmd_doctor, "exit 0 when every Running task has a lease or a queued message"),
        ("keys", cmd_keys, "list each owner's AccessKeyId and AccountId (no secrets)"),
        ("schemas", cmd_schemas, "print the JSON Schema of the wire contract"),
        ("dispatcher", cmd_dispatcher, "publish the notification outbox (distributed mode)"),
    ]
    for name, func, help_text in commands:
        sub.add_parser(name, help=help_text).set_defaults(func=func)
    demo = sub.add_parser(
        "demo", help="start the embedded server and run every job family on demo media"
    )
    demo.add_argument(
        "--exit", action="store_true", help="stop the server after the table (default off a tty)"
    )
    demo.set_defaults(func=cmd_demo)
    worker = sub.add_parser("worker", help="a Celery worker pool")
    worker.add_argument("-Q", "--queues", default="all", help="comma-separated queues or 'all'")
    worker.add_argument("-c", "--concurrency", type=int, help="OPENIMM_WORKER_CONCURRENCY")
    worker.add_argument("-n", "--hostname", default=None, help="worker node name")
    worker.add_argument(
        "--pool",
        choices=["prefork", "threads"],
        help="OPENIMM_WORKER_POOL; threads for batching kinds (image services)",
    )
    worker.add_argument(
        "--no-supervise",
        action="store_true",
        help="run Celery in this process (no automatic restart after a crash)",
    )
    worker.set_defaults(func=cmd_worker)
    pools = sub.add_parser("pools", help="list pools, queue depths; grow/shrink a running pool")
    pools.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "grow", "shrink", "add-queue", "cancel-queue"],
    )
    pools.add_argument("worker", nargs="?")
    pools.add_argument("value", nargs="?")
    pools.set_defaults(func=cmd_pools)
    call = sub.add_parser("call", help="call an IMM RPC action: openimm call GetTask K=V …")
    call.add_argument("action_name")
    call.add_argument("params", nargs="*")
    call.set_defaults(func=cmd_call)
    cp = sub.add_parser("cp", help="upload a file or folder: openimm cp ./photos oss://b/p/")
    cp.add_argument("source")
    cp.add_argument("target")
    cp.set_defaults(func=cmd_cp)
    ls = sub.add_parser("ls", help="list objects: openimm ls oss://bucket/prefix")
    ls.add_argument("uri")
    ls.set_defaults(func=cmd_ls)
    bkt = sub.add_parser("buckets", help="bucket owners and shares (operator, on the database)")
    bkt.add_argument("action", choices=["list", "create", "share", "unshare"])
    bkt.add_argument("name", nargs="?")
    bkt.add_argument("--owner", help="create: the AccessKeyId that owns the bucket")
    bkt.add_argument("--with", dest="grantee", help="share/unshare: the AccessKeyId")
    bkt.add_argument("--read-only", action="store_true", help="share: read, not write")
    bkt.set_defaults(func=cmd_buckets)
    index = sub.add_parser("index", help="index a folder of photos and cluster the people")
    index.add_argument("folder")
    index.add_argument("--dataset", required=True)
    index.add_argument("--project", default="photos")
    index.set_defaults(func=cmd_index)
    people = sub.add_parser("people", help="list the people (figure clusters) of a dataset")
    people.add_argument("--dataset", required=True)
    people.add_argument("--project", default="photos")
    people.add_argument("--json", action="store_true", help="full FigureCluster objects")
    people.set_defaults(func=cmd_people)
    models = sub.add_parser("models", help="the model store: list | verify [NAME] | install NAME")
    models.add_argument("action", nargs="?", default="list", choices=["list", "verify", "install"])
    models.add_argument("name", nargs="?", default="")
    models.add_argument("--json", action="store_true", help="list as JSON (files, SHA-256, …)")
    models.set_defaults(func=cmd_models)
    kinds = sub.add_parser("kinds", help="the job kinds: task types, actions, services, queues")
    kinds.add_argument("--markdown", action="store_true", help="the README's table")
    kinds.set_defaults(func=cmd_kinds)
    _notify_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.errors import ConfigurationError

    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(f"openimm: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
