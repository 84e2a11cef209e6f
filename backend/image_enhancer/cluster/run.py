"""The driver of `image-enhancer enhance --cluster auto|ray://HOST:PORT|HOST:PORT`: the batch as a Ray
Data pipeline, following Ray's batch-inference pattern.

    the jobs (input → output, named as the local batch names them)
      → ray.data.from_items, one file per block so that work spreads evenly and a retry redoes one file
      → map_batches(EnhanceWorker) on a fixed pool of actors: one per GPU (num_gpus=1) on GPU clusters,
        else one per node (num_cpus = the node's cores; --cluster-actor-cpus to split nodes), each
        asking Ray for the memory a CPU enhancer is promised
      → the result rows, streamed back here for progress and the final report.

Ray restarts an actor that dies and retries its file elsewhere; the manifest (cluster.manifest) keeps a
rerun, after anything worse, to what is missing. Inputs are local paths that every node sees (a shared
file system) or URIs of any file system pyarrow reaches (s3://, gs://, ...); the output folder must be a
path every node can write.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from image_enhancer.cluster.worker import RESULT_FIELDS, EnhanceWorker, WorkerSettings, is_uri

# Memory Ray reserves for each actor: the 2.5 GB a CPU enhancer is promised (the engine's working memory
# is capped at 1.5 GiB by runtimes.memory.memory_budget; the model and the runtime take the rest).
ACTOR_MEMORY = 2_500_000_000
# Blocks of the input dataset: one file each up to this many, so actors share the work evenly.
MAX_BLOCKS = 100_000


@dataclass(frozen=True)
class ClusterJob:
    source: str  # an absolute local path or a URI
    target: str  # an absolute local path


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    remote_args: dict[str, Any]  # num_cpus / num_gpus / memory of each actor
    threads: int | None  # CPU threads of each actor's engine


def run_cluster(args: argparse.Namespace) -> int:
    try:
        import ray
    except ImportError:
        print("error: --cluster needs Ray: pip install 'image-enhancer[cluster]'", file=sys.stderr)
        return 2
    if args.server:
        print("error: --cluster and --server are two ways to run the work; choose one", file=sys.stderr)
        return 2
    skipped: list[str] = []
    try:
        jobs, root = plan_jobs(args, skipped)
        options = resolved_options(args)
    except (ValueError, LookupError, OSError) as error:
        print(*skipped, f"error: {error}", sep="\n", file=sys.stderr)
        return 2
    print(*skipped, sep="\n", end="\n" if skipped else "", file=sys.stderr)
    _remove_stale_temporaries(jobs)
    try:
        started_here = connect(ray, args.cluster)
    except (ConnectionError, RuntimeError, ValueError) as error:
        print(f"error: cannot join the Ray cluster {args.cluster!r}: {error}", file=sys.stderr)
        return 2
    try:
        plan = plan_actors(ray, args.device, args.cluster_actor_cpus)
        settings = WorkerSettings(
            options=options,
            output_root=str(root),
            device=args.device,
            precision=args.precision,
            runtime=args.runtime,
            threads=plan.threads,
            max_output_pixels=None if args.max_output_megapixels is None
            else max(1, round(args.max_output_megapixels * 1e6)),
            overwrite=args.overwrite,
            compare=args.compare,
            inputs=_local_identities(jobs),
        )
        return execute(ray, jobs, settings, plan)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if started_here:
            ray.shutdown()


def plan_jobs(args: argparse.Namespace, skipped: list[str]) -> tuple[list[ClusterJob], Path]:
    """The jobs and the output folder (where the manifest lives), paths made absolute for the workers;
    folder entries that are not regular files are left out with a note in `skipped`."""
    uris = [item for item in args.inputs if is_uri(item)]
    if uris and len(uris) != len(args.inputs):
        raise ValueError("give either local paths or URIs as inputs, not both")
    if uris:
        root = Path(os.path.abspath(args.output))
        if root.suffix.lower() and root.suffix.lower() in _readable_suffixes():
            raise ValueError(f"{args.output}: with URI inputs the output must be a folder")
        pairs = _uri_jobs(uris, root, args.format, args.recursive)
        return [ClusterJob(source, os.path.abspath(target)) for source, target in pairs], root
    from image_enhancer.batch import collect_jobs

    local = collect_jobs(args.inputs, args.output, args.format, args.recursive, skipped)
    output = Path(os.path.abspath(args.output))
    single_file = len(local) == 1 and Path(os.path.abspath(local[0].target)) == output
    root = output.parent if single_file else output
    return [ClusterJob(os.path.abspath(j.source), os.path.abspath(j.target)) for j in local], root


def _remove_stale_temporaries(jobs: list[ClusterJob]) -> None:
    """As the local batch does: temporary files an interrupted run left in the output folders."""
    from image_enhancer.publish import remove_stale_temporaries

    for folder in sorted({Path(job.target).parent for job in jobs}):
        for stale in remove_stale_temporaries(folder):
            print(f"removed {stale}: a temporary file left by an interrupted run", file=sys.stderr)


def _readable_suffixes() -> set[str]:
    from image_enhancer.imagefiles import READABLE_SUFFIXES

    return READABLE_SUFFIXES


def _uri_jobs(uris: list[str], root: Path, suffix: str | None, recursive: bool) -> list[tuple[str, Path]]:
    """Files under URIs, listed with pyarrow's file systems, named as the local batch names outputs:
    the input's stem with its own suffix or --format's, in the output folder."""
    from pyarrow import fs

    readable = _readable_suffixes()
    pairs: list[tuple[str, Path]] = []
    for uri in uris:
        filesystem, path = fs.FileSystem.from_uri(uri)
        scheme = uri.split("://", 1)[0]
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
            files = sorted(i.path for i in found if i.type == fs.FileType.File)
            files = [f for f in files if PurePosixPath(f).suffix.lower() in readable]
        elif info.type == fs.FileType.File:
            files = [path]
        else:
            raise ValueError(f"{uri}: no such file or folder")
        for file in files:
            name = PurePosixPath(file)
            new_suffix = "." + suffix.lstrip(".") if suffix else name.suffix
            pairs.append((f"{scheme}://{file}", root / (name.stem + new_suffix)))
    if not pairs:
        raise ValueError("no input images found (readable: " + ", ".join(sorted(readable)) + ")")
    targets = [target for _, target in pairs]
    if len(set(targets)) != len(targets):
        raise ValueError("two inputs would write the same output name; give them separate output folders")
    return pairs


def resolved_options(args: argparse.Namespace):  # noqa: ANN201 - an EnhanceOptions
    """The request, with the model's name resolved here, so an unknown model is one error up front."""
    from image_enhancer.batch import request_options
    from image_enhancer.weights.store import ModelStore
    from image_enhancer.wire import find_model

    options = request_options(args)
    store = ModelStore()
    if options.faces:  # a missing face model is one error here, not one per file on the workers
        from image_enhancer.faces.catalogue import FaceModels

        FaceModels(store.models_dir, store.weights_dir).path_of(options.face_model)
    if options.faces_only:
        return replace(options, model="")
    chosen = find_model(store.list(), options.model)
    if chosen is None:
        raise LookupError(f"unknown model {options.model!r} (see `image-enhancer models`)")
    return replace(options, model=chosen.name)


def _local_identities(jobs: list[ClusterJob]) -> dict[tuple[int, int], Path]:
    from image_enhancer.batch import input_identities

    return input_identities([Path(job.source) for job in jobs if not is_uri(job.source)])


def connect(ray: Any, address: str) -> bool:
    """Join the cluster at `address`; True when this call started Ray (and so must stop it).

    "auto": the Ray this process already runs, else Ray's own choice (RAY_ADDRESS, a cluster started on
    this machine with `ray start`, else a new one-machine cluster)."""
    if ray.is_initialized():
        return False
    settings = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address == "auto":
        ray.init(**settings)
    else:
        ray.init(address=address, **settings)
    return True


def plan_actors(ray: Any, device: str, actor_cpus: int | None) -> ActorPlan:
    """One actor per GPU where there are GPUs (and the device allows them); else CPU actors of
    `actor_cpus` cores each (default: a whole node's), as many as the nodes hold."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and (device == "auto" or device.startswith("cuda")):
        return ActorPlan(gpus, {"num_gpus": 1, "num_cpus": 1, "memory": ACTOR_MEMORY}, None)
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
    node_cpus = [cpus for cpus in node_cpus if cpus > 0]
    if not node_cpus:
        raise ValueError("the Ray cluster has no CPUs to run on")
    if actor_cpus and actor_cpus > max(node_cpus):
        raise ValueError(f"--cluster-actor-cpus {actor_cpus}: the largest node has {max(node_cpus)} cores")
    per_actor = actor_cpus or min(node_cpus)
    actors = max(1, sum(cpus // per_actor for cpus in node_cpus))
    return ActorPlan(actors, {"num_cpus": per_actor, "memory": ACTOR_MEMORY}, per_actor)


def execute(ray: Any, jobs: list[ClusterJob], settings: WorkerSettings, plan: ActorPlan) -> int:
    """Run the pipeline; print a line per failed file, a progress bar and the final report."""
    import ray.data
    from tqdm import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts files; Ray's would count blocks
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"source": job.source, "target": job.target} for job in jobs]
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    results = dataset.map_batches(
        EnhanceWorker,
        fn_constructor_kwargs={"settings": settings},
        batch_size=1,  # a file takes seconds, a call milliseconds; the engine batches tiles itself
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        **plan.remote_args,
    )
    print(f"cluster: {len(jobs)} file(s) on {plan.actors} actor(s) "
          f"({', '.join(f'{k}={v}' for k, v in plan.remote_args.items() if k != 'memory')} each)",
          file=sys.stderr)
    counts = dict.fromkeys(("done", "skipped", "failed"), 0)
    megapixels = 0.0
    started = time.monotonic()
    first_result: float | None = None
    broken: BaseException | None = None
    with tqdm(total=len(jobs), unit="file", desc="cluster", dynamic_ncols=True) as bar:
        try:
            for row in results.iter_rows():
                row = {name: _plain(row[name]) for name in RESULT_FIELDS}
                if first_result is None:
                    first_result = time.monotonic() - started
                counts[row["status"]] += 1
                megapixels += row["megapixels"]
                if row["status"] == "failed":
                    bar.write(f"{row['source']}: failed: {row['message']}", file=sys.stderr)
                elif row["status"] == "done" and row["message"]:  # what the face pass did
                    bar.write(f"{row['source']}: {row['message']}", file=sys.stderr)
                bar.update(1)
        except Exception as error:  # the cluster itself failed (lost, out of resources): report and stop
            broken = error
    report = Report(len(jobs), counts["done"], counts["skipped"], counts["failed"], megapixels,
                    time.monotonic() - started, first_result or 0.0)
    if broken is not None:
        print(f"error: the cluster stopped: {type(broken).__name__}: {broken}", file=sys.stderr)
    print(report.describe(), file=sys.stderr)
    return 0 if report.complete and not report.failed else 1


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class Report:
    total: int
    done: int
    skipped: int  # done by an earlier run
    failed: int
    megapixels: float  # output megapixels made by this run
    seconds: float
    start_up: float  # until the first result: Ray's pipeline and the enhancers loading their model

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.skipped - self.failed

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def describe(self) -> str:
        seconds = max(self.seconds, 1e-9)
        line = (f"{self.done} done, {self.skipped} already done, {self.failed} failed, {self.remaining} "
                f"remaining of {self.total} in {self.seconds:.1f} s, {self.start_up:.1f} s of it starting "
                f"({self.done / seconds:.2f} files/s, {self.megapixels / seconds:.3f} output megapixels/s)")
        if self.remaining:
            line += "; run the same command again to do the rest"
        return line
