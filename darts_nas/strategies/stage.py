"""The strategy stage: search a trained supernet (or NAS-Bench-201's records) with ``--strategy``.

Three ways in:

* after the supernet training of a search run (``--strategy`` with any method; random-ws and spos
  default to their papers' strategies), in the same run directory, before the run is finished;
* ``--supernet RUN_DIR``: the supernet of a finished search run of the same ``--space`` (any
  method: a DARTS-family supernet is searched by forcing each candidate through it), into
  ``--out``;
* ``--score benchmark`` (``--space nas-bench-201 --benchmark PATH``): no supernet; candidates are
  scored by the benchmark's 12-epoch validation accuracy, each query charged the recorded
  training time against a simulated budget (``--strategy-seconds``, NAS-Bench-201's 12,000 s).

**Scoring by the supernet.** The candidate's architecture is forced through the supernet (each
edge computes only the candidate's op; edges it leaves out compute nothing); BatchNorm's running
statistics are reset and re-estimated on ``--bn-batches`` weight-half batches in training mode
(a cumulative average, no gradient, nothing else changes), as SPOS does before scoring; the
score is the accuracy (%) on the first ``--score-batches`` batches of the architecture half in
eval mode. The same batches serve every candidate, so a score is a function of the weights and
the genotype alone.

**Records.** candidates.jsonl gets one line per candidate asked (a repeat costs no scoring:
``cached``); TensorBoard the best-so-far score (``strategy/best_score``, in ``<out>/strategy``);
genotype.json the chosen genotype. A killed stage resumes exactly: the strategy is rebuilt from
its seed and told the recorded scores again, and must ask for the recorded genotypes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from itertools import islice
from pathlib import Path
from statistics import mean
from typing import Any, Callable

import torch
from torch import nn

from ..candidates import CandidateSpace, candidate_space
from ..checkpoint import atomic_write_text
from ..errors import BenchmarkError, CheckpointError, ConfigError
from ..methods.sampling import one_hot_plan
from ..runfiles import append_record
from ..tracking import read_jsonl
from . import import_optuna, make_strategy

GROUP = 1000  # Li and Talwalkar's selection: groups of 1,000 candidates, the best of each re-scored
CANDIDATES = "candidates.jsonl"
DEFAULT_CANDIDATES = 100
DEFAULT_BENCHMARK_SECONDS = 12_000.0  # NAS-Bench-201's REA/RS/REINFORCE/BOHB budget


def check_strategy(config: Any) -> None:
    """What can be refused before anything is written."""
    if config.strategy == "bo":
        import_optuna()


def budget(config: Any) -> tuple[int | None, float | None]:
    """(candidates, seconds): what was given; neither given: 100 candidates, or with --score
    benchmark 12,000 simulated seconds."""
    n, seconds = config.strategy_candidates, config.strategy_seconds
    if n is None and seconds is None:
        if config.strategy_score == "benchmark":
            return None, DEFAULT_BENCHMARK_SECONDS
        return DEFAULT_CANDIDATES, None
    return n, seconds


# ---------------------------------------------------------------------------------------------
# Scoring by the supernet
# ---------------------------------------------------------------------------------------------


class ForcedArchitecture:
    """Stands in for a supernet's method while a candidate is scored: each edge computes only the
    candidate's op (weight exactly 1), or nothing."""

    def __init__(self, paths: dict[str, list[int]]) -> None:
        self.paths = paths

    def edge_plan(self, model: nn.Module, cell_type: str):
        like = model.arch_group(f"alphas_{cell_type}")
        return one_hot_plan(self.paths[cell_type], like.shape[-1], like)


@contextlib.contextmanager
def forced(model: nn.Module, paths: dict[str, list[int]]):
    method = model.method
    model.method = ForcedArchitecture(paths)
    try:
        yield
    finally:
        model.method = method


def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over
    ``batches`` (forward passes in training mode without gradients). Nothing else changes."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over the batches
    model.train()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)


class SupernetScorer:
    """Scores genotypes with a trained supernet's shared weights (see the module's docstring)."""

    def __init__(self, model: nn.Module, space: CandidateSpace, bn_batches: list[torch.Tensor],
                 score_batches: list[tuple[torch.Tensor, torch.Tensor]], full_loader=None, speed=None) -> None:
        self.model, self.space, self.speed = model, space, speed
        self.bn_batches, self.score_batches, self.full_loader = bn_batches, score_batches, full_loader

    def _batch(self, batch):
        return batch if self.speed is None else self.speed.batch(batch)

    def _autocast(self):
        return contextlib.nullcontext() if self.speed is None else self.speed.autocast()

    @torch.no_grad()
    def score(self, genotype: Any, full: bool = False) -> dict[str, float]:
        """Accuracy (%) and loss on the scoring batches (``full``: the whole architecture half)."""
        model = self.model
        with forced(model, self.space.paths(genotype)):
            if self.bn_batches:
                with self._autocast():
                    recalibrate_batchnorm(model, self.bn_batches)
            was_training = model.training
            model.eval()
            correct = loss = seen = 0.0
            batches = self.full_loader if full else self.score_batches
            for batch in batches:
                x, y = self._batch(batch) if full else batch
                with self._autocast():
                    logits = model(x).float()
                loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
                seen += y.numel()
            model.train(was_training)
        return {"score": 100.0 * correct / max(seen, 1), "loss": loss / max(seen, 1)}


def supernet_scorer(model: nn.Module, data, config: Any, space: CandidateSpace, speed) -> SupernetScorer:
    """The scorer of a search's supernet and data: its first ``--bn-batches`` weight-half batches
    (the order of pass 0, the augmentation seeded by ``--seed``: the same on a resumed run) and
    the first ``--score-batches`` architecture-half batches."""
    from ..data import set_epoch

    torch.manual_seed(config.seed)
    set_epoch(data.weight_loader, 0)
    bn = [speed.batch(b)[0] for b in islice(data.weight_loader, config.bn_batches)] if config.bn_batches else []
    score = [speed.batch(b) for b in islice(data.arch_eval_loader, config.score_batches)]
    return SupernetScorer(model, space, bn, score, data.arch_eval_loader, speed)


# ---------------------------------------------------------------------------------------------
# Scoring by NAS-Bench-201's records
# ---------------------------------------------------------------------------------------------


class BenchmarkRecords:
    """A candidate's NAS-Bench-201 numbers: the 12-epoch validation accuracy and the simulated
    cost of a query (the recorded training time of the 12 epochs plus one validation pass, as
    the benchmark's REA/RS baselines charge), or the 200-epoch accuracies."""

    def __init__(self, benchmark: Any, dataset: str) -> None:
        self.benchmark, self.dataset = benchmark, dataset
        # the run whose validation accuracy is read (cifar10's valid is the cifar10-valid run's)
        self.valid_run = "cifar10-valid" if dataset == "cifar10" else dataset

    def twelve(self, arch: Any) -> dict[str, Any]:
        """``score``: the 12-epoch validation accuracy (the mean over the records' seeds);
        ``seconds``: the simulated cost of the query."""
        result = self.benchmark.query(str(arch), self.dataset, hp="12")
        record = self.benchmark.record(result["index"])["12"]
        costs = []
        for seed in record["dataset_seed"].get(self.valid_run) or []:
            run = record["all_results"][(self.valid_run, seed)]
            last = run["epochs"] - 1
            valid_time = run["eval_times"].get(f"x-valid@{last}", 0.0)
            costs.append(sum(float(t) for t in run["train_times"].values()) + float(valid_time))
        if not costs:
            raise BenchmarkError(f"architecture {result['index']} has no 12-epoch run on {self.valid_run}")
        return {"score": result["valid_acc"], "benchmark_test_acc_12": result["test_acc"],
                "benchmark_index": result["index"], "seconds": mean(costs)}

    def final(self, arch: Any) -> dict[str, Any] | None:
        try:
            return self.benchmark.query(str(arch), self.dataset, hp="200")
        except BenchmarkError:
            return None


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-b of two equally long score lists (ties counted as in tau-b); None with
    fewer than two pairs or a constant list."""
    n = len(xs)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return None if denominator == 0 else (concordant - discordant) / denominator


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def run_stage(config: Any, out: Path, log, space: CandidateSpace, score: Callable[[Any], dict[str, Any]],
              rescore: Callable[[Any], dict[str, Any]] | None = None, records: BenchmarkRecords | None = None,
              resuming: bool = False, simulated: bool = False) -> tuple[Any, dict[str, Any]]:
    """Run ``config.strategy`` over ``space`` until the budget is spent; returns the chosen
    genotype and the stage's summary. ``score(genotype)`` gives ``{"score": ...}`` (and, when
    ``simulated``, the ``seconds`` to charge); ``rescore`` scores on the whole architecture half
    (random's second stage); ``records`` looks every candidate up in the benchmark (for Kendall's
    tau). ``resuming``: replay candidates.jsonl; otherwise it is started afresh."""
    path = out / CANDIDATES
    logged = read_jsonl(path, log.info) if resuming and path.exists() else []
    if logged:  # without a torn last line, which the next record must not continue
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in logged))
    elif path.exists():
        path.unlink()
    strategy = make_strategy(config.strategy, space, config.seed, config)
    max_candidates, max_seconds = budget(config)
    writer = _board(out, config)
    replay = iter([r for r in logged if r.get("stage") == "search"])
    cache: dict[str, dict[str, Any]] = {r["arch"]: r for r in logged if r.get("stage") == "search" and not r.get("cached")}
    n, spent, best = 0, 0.0, None
    kind = "simulated training seconds" if simulated else "seconds"
    what = f"{max_candidates} candidates" if max_candidates is not None else ""
    what += (" or " if what else "") + (f"{max_seconds:g} {kind}" if max_seconds is not None else "")
    log.info(f"strategy {config.strategy} over {space.size():,} candidates, budget {what}, seed {config.seed}"
             + ("" if simulated else f"; each scored on {config.score_batches} architecture-half batches after "
                f"recalibrating BatchNorm on {config.bn_batches} weight-half batches"))
    while (max_candidates is None or n < max_candidates) and (max_seconds is None or spent < max_seconds):
        genotype = strategy.ask()
        arch = space.key(genotype)
        record = next(replay, None)
        if record is not None:
            if record["arch"] != arch:
                raise CheckpointError(f"{path} does not belong to this strategy (candidate {n + 1} was {record['arch']}, "
                                      f"now {arch}): pass --overwrite to start the strategy again")
        else:
            record = _score(genotype, arch, cache, score, records, simulated)
            record.update(n=n + 1, stage="search")
            append_record(path, record)
        strategy.tell(genotype, record["score"])
        n += 1
        spent += record["seconds"] if (simulated or not record["cached"]) else 0.0
        if best is None or record["score"] > best["score"]:
            best = record
        if writer is not None:
            writer.add_scalar("strategy/best_score", best["score"], n)
            writer.add_scalar("strategy/score", record["score"], n)
            if simulated:
                writer.add_scalar("strategy/best_score_by_simulated_seconds", best["score"], int(spent))
        log.info(f"  candidate {n}: score {record['score']:.2f}{' (again)' if record['cached'] else ''}  best "
                 f"{best['score']:.2f}  {record['seconds']:.2f} {kind}")
    if best is None:
        raise ConfigError("the budget ran out before the first candidate")
    chosen, chosen_by = best, "score"
    rescored = []
    if config.strategy == "random" and rescore is not None and config.rescore_top > 0:
        chosen, rescored = _rescore(config, out, log, space, logged, path, rescore)
        chosen_by = "whole architecture half"
    genotype = _genotype_of(space, chosen)
    summary = {"strategy": config.strategy, "candidates": n, "spent": spent, "spent_kind": kind,
               "best_score": chosen["score"], "chosen_by": chosen_by, "genotype": chosen["genotype"],
               "rescored": len(rescored), "loss": chosen.get("loss")}
    if records is not None:
        final = records.final(genotype)
        summary["benchmark_200"] = final
        if not simulated:
            summary["kendall_tau"], summary["kendall_pairs"] = _tau(path)
    log.info(f"strategy {config.strategy} chose (by {chosen_by}, score {chosen['score']:.2f}) after {n} candidates "
             f"and {spent:.1f} {kind}: {genotype}")
    if summary.get("kendall_tau") is not None:
        log.info(f"Kendall's tau between the supernet's and the benchmark's ranking over "
                 f"{summary['kendall_pairs']} candidates: {summary['kendall_tau']:.3f}")
    if records is not None and summary.get("benchmark_200"):
        b = summary["benchmark_200"]
        log.info(f"benchmark ({b['dataset']}, 200 epochs): valid {b['valid_acc']:.2f}%  test {b['test_acc']:.2f}% "
                 f"(index {b['index']})")
    if writer is not None:
        writer.close()
    return genotype, summary


def _genotype_of(space: CandidateSpace, record: dict[str, Any]):
    from ..arch_string import ArchGenotype
    from ..genotype import Genotype

    data = record["genotype"]
    return ArchGenotype.from_dict(data) if data.get("space") == "nas-bench-201" else Genotype.from_dict(data)


def _score(genotype, arch: str, cache: dict[str, dict[str, Any]], score, records: BenchmarkRecords | None,
           simulated: bool) -> dict[str, Any]:
    if arch in cache:
        again = cache[arch]
        return {"arch": arch, "genotype": genotype.to_dict(), "score": again["score"], "cached": True,
                "seconds": again["seconds"], **{k: again[k] for k in again if k.startswith("benchmark")}}
    start = time.perf_counter()
    result = score(genotype)
    seconds = result.pop("seconds") if simulated else time.perf_counter() - start
    record = {"arch": arch, "genotype": genotype.to_dict(), "cached": False, "seconds": seconds, **result}
    if records is not None and not simulated:
        final = records.final(genotype)
        record["benchmark_valid_acc"] = None if final is None else final["valid_acc"]
    cache[arch] = record
    return record


def _rescore(config, out: Path, log, space, logged, path: Path, rescore) -> tuple[dict[str, Any], list]:
    """Li and Talwalkar's second stage: the best ``--rescore-top`` of each group of 1,000 scored
    on the whole architecture half; the best of those is chosen."""
    first = [r for r in read_jsonl(path) if r.get("stage") == "search"]
    done = {r["arch"]: r for r in logged if r.get("stage") == "rescore"}
    chosen, rescored = None, []
    for g in range(0, len(first), GROUP):
        group = {}
        for r in first[g:g + GROUP]:
            group.setdefault(r["arch"], r)
        top = sorted(group.values(), key=lambda r: -r["score"])[:config.rescore_top]
        for r in top:
            record = done.get(r["arch"])
            if record is None:
                start = time.perf_counter()
                result = rescore(_genotype_of(space, r))
                record = {"arch": r["arch"], "genotype": r["genotype"], "stage": "rescore", "cached": False,
                          "first_score": r["score"], "seconds": time.perf_counter() - start, **result}
                append_record(path, record)
                done[r["arch"]] = record
            rescored.append(record)
            log.info(f"  re-scored on the whole architecture half: {record['score']:.2f} (was {r['score']:.2f})")
            if chosen is None or record["score"] > chosen["score"]:
                chosen = record
    return chosen, rescored


def _tau(path: Path) -> tuple[float | None, int]:
    pairs = {}
    for r in read_jsonl(path):
        if r.get("stage") == "search" and not r.get("cached") and r.get("benchmark_valid_acc") is not None:
            pairs[r["arch"]] = (r["score"], r["benchmark_valid_acc"])
    values = list(pairs.values())
    return kendall_tau([a for a, _ in values], [b for _, b in values]), len(values)


def _board(out: Path, config: Any):
    """A fresh TensorBoard run ``<out>/strategy`` (the whole curve is written again on resuming)."""
    if not config.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    folder = out / "strategy"
    if folder.is_dir():
        shutil.rmtree(folder)
    return SummaryWriter(log_dir=str(folder))


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def supernet_stage(config: Any, model: nn.Module, data, speed, log, out: Path, resuming: bool,
                   bench_scorer=None) -> tuple[Any, dict[str, Any]]:
    """The stage after a search's supernet training (the search loop's one call)."""
    space = candidate_space(config.space, config.nodes, config.primitives, getattr(model, "multiplier", None))
    scorer = supernet_scorer(model, data, config, space, speed)
    records = None if bench_scorer is None else BenchmarkRecords(bench_scorer.benchmark, bench_scorer.dataset)
    return run_stage(config, out, log, space, scorer.score, lambda g: scorer.score(g, full=True), records,
                     resuming=resuming)


STAGE_FILES = ("config.json", "log.txt", CANDIDATES, "genotype.json", "summary.json")
# settings a resumed strategy may change
STAGE_RESUMABLE = {"out", "overwrite", "data", "download", "workers", "device", "report_every", "tensorboard",
                   "amp", "channels_last", "compile", "gpu_data", "recompute"}


def run_strategy_only(config: Any, quiet: bool = False) -> dict[str, Any]:
    """``--supernet RUN_DIR`` or ``--score benchmark``: a strategy run of its own in ``--out``."""
    from ..bench_search import BenchmarkScorer
    from ..distributed import session
    from ..runfiles import RunDirLock
    from ..runtime import FINISHED_MARKER, prepare_run_dir
    from ..tracking import RunLog

    check_strategy(config)
    bench = BenchmarkScorer.from_config(config)
    with session(config.device) as ctx:
        if ctx.is_distributed:
            raise ConfigError("a strategy runs in one process: run it without torchrun")
        if config.strategy_score == "benchmark":
            saved, model, data, speed = None, None, None, None
            dataset = bench.dataset
        else:
            saved = finished_supernet(config)
            model, data, speed = load_supernet(saved, config, ctx.device)
            dataset = saved.dataset
        lock = RunDirLock()
        if saved is not None and config.out and Path(config.out).resolve() == Path(config.supernet).resolve():
            raise ConfigError("--out is the --supernet run itself: give the strategy its own --out")
        out = prepare_run_dir(config.out, "search", dataset, config.overwrite, STAGE_FILES,
                              allow_unfinished=True, lock=lock)
        log = lock.released_on_error(lambda: RunLog(out, quiet=quiet))
        try:
            settings = {k: v for k, v in config.to_dict().items() if k not in STAGE_RESUMABLE}
            earlier = out / "config.json"
            resuming = False
            if earlier.is_file() and (out / CANDIDATES).is_file():
                try:
                    before = json.loads(earlier.read_text()).get("config", {})
                except (OSError, ValueError):
                    before = {}
                resuming = {k: v for k, v in before.items() if k not in STAGE_RESUMABLE} == settings
                if not resuming and not config.overwrite:
                    raise ConfigError(f"{out} holds an unfinished strategy run with other settings: choose another "
                                      f"--out, or pass --overwrite to start afresh")
            atomic_write_text(earlier, json.dumps({"kind": "strategy", "config": config.to_dict(),
                                                   **({"supernet": str(config.supernet)} if saved else {})},
                                                  indent=2, sort_keys=True))
            if resuming:
                log.info(f"resuming the strategy in {out} from its {CANDIDATES}")
            space = candidate_space(config.space, config.nodes, config.primitives,
                                    getattr(model, "multiplier", None))
            records = None if bench is None else BenchmarkRecords(bench.benchmark, bench.dataset)
            start = time.perf_counter()
            if model is None:
                genotype, summary = run_stage(config, out, log, space, records.twelve, None, records,
                                              resuming=resuming, simulated=True)
            else:
                log.info(f"searching the {saved.method} supernet of {config.supernet} ({saved.space} space)")
                scorer = supernet_scorer(model, data, config, space, speed)
                genotype, summary = run_stage(config, out, log, space, scorer.score,
                                              lambda g: scorer.score(g, full=True), records, resuming=resuming)
            genotype.save(out / "genotype.json")
            summary.update(finished=True, out=str(out), wall_time=time.perf_counter() - start,
                           genotype_text=str(genotype), valid_acc=summary["best_score"], valid_loss=summary["loss"])
            atomic_write_text(out / FINISHED_MARKER, json.dumps(summary, indent=2, sort_keys=True))
            log.info(f"genotype written to {out / 'genotype.json'}")
            return summary
        finally:
            log.close()
            lock.release()


def finished_supernet(config: Any):
    """The settings of the finished search run ``--supernet`` names, or one line naming the fix."""
    from ..config import SearchConfig

    run = Path(config.supernet)
    settings = run / "config.json"
    if not settings.is_file():
        raise ConfigError(f"--supernet {run} is not a search run directory (no config.json): give the --out of a "
                          f"train_search.py run")
    try:
        saved = json.loads(settings.read_text())
        saved = SearchConfig.from_dict({**saved["config"], "strategy": None, "supernet": None,
                                        "strategy_score": "supernet"})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"--supernet {run}: its config.json is not a search run's settings: give the --out of "
                          f"a train_search.py run") from None
    if not (run / "summary.json").is_file():
        raise ConfigError(f"--supernet {run} has not finished its supernet training (no summary.json): finish it "
                          f"first (run its command again to resume)")
    if saved.space != config.space:
        raise ConfigError(f"--supernet {run} is a supernet of the {saved.space} space, not --space {config.space}: "
                          f"add --space {saved.space} or give a {config.space} run")
    if not (run / "checkpoint.pt").is_file():
        raise ConfigError(f"--supernet {run} holds no checkpoint.pt with the trained weights")
    return saved


def load_supernet(saved: Any, config: Any, device: torch.device):
    """The finished run's supernet with its trained weights, and its data (the same split)."""
    from ..accel import Speed
    from ..checkpoint import load_checkpoint
    from ..data import search_data
    from ..search import build_search

    speed = Speed(device)
    data = search_data(saved.dataset, config.data, saved.batch_size, saved.train_portion, seed=saved.seed,
                       workers=config.workers, download=config.download, image_size=saved.image_size,
                       device_type=device.type)
    model, _, _ = build_search(saved, data.info, speed)
    state = load_checkpoint(Path(config.supernet) / "checkpoint.pt", map_location=device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"--supernet {config.supernet}: its checkpoint.pt does not fit the supernet its "
                              f"config.json describes ({str(exc).splitlines()[0]})") from None
    return model, data, speed
