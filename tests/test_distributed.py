"""Data-parallel training: DDP over gloo with two CPU processes.

Shards and partitions are checked without processes. Two ``torch.multiprocessing.spawn`` runs
train a tiny model on the tiny MNIST fixture (60 train, 25 test images: 25 is odd on purpose):
the first stops after epoch 1, the second resumes it; both check after every step that the
ranks hold identical parameters, and the first checks gathered evaluations of 7 and 11 samples
against one process. Two ``resnetkit train --nproc 2`` commands check the launcher: a normal
run, and one whose rank 1 dies at step 2.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from resnetkit.cli import launch
from resnetkit.config import RunConfig
from resnetkit.data.memory import MemoryLoader
from resnetkit.data.streaming import FolderDataset, FolderLoader
from resnetkit.data.transforms import Normalizer
from resnetkit.errors import UserError
from resnetkit.training import distributed, train
from resnetkit.steps import evaluate_batches

WORLD = 2
SPAWN_TIMEOUT_S = 120  # a bound on a hung group, far above the few seconds a run takes
LAUNCH_TIMEOUT_S = 120
# 1 process vs 2 with --sync-bn: the same global batches, losses and gradients up to the order of
# float32 sums (per-rank convolutions, all-reduces). After the 6 SGD steps below (lr 0.01) the
# weights differ by 1.2e-7 at most, as much as one process with 1 thread vs 2 threads (measured).
# The bound leaves room for other CPUs' summation orders, and is far below a real difference:
# per-rank BatchNorm statistics (no --sync-bn) move the weights by 2e-2. (At lr 0.05 float noise
# alone already grows to 3e-5 in 6 steps on this noise data, hence the small lr.)
WEIGHT_ATOL = 1e-4


def tiny_cfg(data_root: Path, out: Path, **kw) -> dict:
    # precision and memory format fixed: runs with one and two processes must use the same kernels
    return dict(dataset="mnist", data_dir=str(data_root), model="resnet8", batch_size=20, epochs=2,
                lr=0.01, threads=1, sync_bn=True, precision="fp32", channels_last=False, out=str(out),
                verbose=False, **kw)


def weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


# ------------------------------------------------------------------ without processes
def normalizer() -> Normalizer:
    return Normalizer((0.5,), (0.5,))


def memory_loader(n: int, rank: int, world: int, *, train_: bool, batch: int) -> MemoryLoader:
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    return MemoryLoader(images, torch.arange(n), batch_size=batch, normalizer=normalizer(), train=train_,
                        seed=3, rank=rank, world_size=world)


def memory_batches(loader: MemoryLoader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [y.tolist() for _, y in loader]  # the labels are the sample indices


def folder_batches(loader: FolderLoader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return loader.batch_indices()


def folder_loader(n: int, rank: int, world: int, *, train_: bool, batch: int) -> FolderLoader:
    ds = FolderDataset([Path(f"{i}.png") for i in range(n)], [0] * n, lambda img: img, 1, False)
    return FolderLoader(ds, batch_size=batch, train=train_, seed=3, device=torch.device("cpu"),
                        normalizer=normalizer(), workers=0, rank=rank, world_size=world)


@pytest.mark.parametrize("make, batches", [(memory_loader, memory_batches), (folder_loader, folder_batches)],
                         ids=["in-memory", "DataLoader"])
def test_train_shards_are_disjoint_halves_of_the_global_batches_reshuffled_each_epoch(make, batches) -> None:
    n, per_rank = 50, 4
    single = make(n, 0, 1, train_=True, batch=per_rank * WORLD)
    ranks = [make(n, r, WORLD, train_=True, batch=per_rank) for r in range(WORLD)]
    assert len(ranks[0]) == len(ranks[1])  # DDP needs the same number of steps on every rank
    for epoch in (1, 2):
        whole = batches(single, epoch)
        parts = [batches(loader, epoch) for loader in ranks]
        for i, (a, b) in enumerate(zip(*parts)):
            assert len(a) == len(b) == per_rank and not set(a) & set(b)
            assert set(a) | set(b) == set(whole[i])  # each global batch is the single-process batch
    assert batches(ranks[0], 1) != batches(ranks[0], 2)  # reshuffled every epoch
    assert batches(ranks[0], 1) == batches(make(n, 0, WORLD, train_=True, batch=per_rank), 1)  # seeded


@pytest.mark.parametrize("n", [7, 11])
@pytest.mark.parametrize("world", [2, 3])
def test_test_split_is_an_exact_partition_in_order(n: int, world: int) -> None:
    for make, batches in ((memory_loader, memory_batches), (folder_loader, folder_batches)):
        parts = [batches(make(n, r, world, train_=False, batch=2), 0) for r in range(world)]
        flat = [i for part in parts for batch in part for i in batch]
        assert flat == list(range(n))  # every sample once, no padding duplicates, dataset order


def test_global_batch_must_split_evenly_over_the_processes() -> None:
    distributed.check_batch_size(64, 2)
    with pytest.raises(UserError, match="multiple of 3, e.g. 63 or 66"):
        distributed.check_batch_size(64, 3)


def test_train_with_nproc_outside_a_launcher_says_how_to_launch(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"resnetkit train --nproc 2.*torchrun --nproc-per-node 2"):
        train(nproc=2, out=str(tmp_path / "r"), verbose=False)
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_keeps_its_number_of_processes() -> None:
    assert distributed.checked_nproc(1, 2, resuming=False) == 2  # under torchrun: recorded as 2
    with pytest.raises(UserError, match="trained with 1 process"):
        distributed.checked_nproc(1, 2, resuming=True)
    with pytest.raises(UserError, match="leave --nproc out"):
        distributed.checked_nproc(4, 2, resuming=False)


def test_the_launcher_passes_every_flag_but_nproc() -> None:
    from resnetkit.cli import build_parser
    from resnetkit.cli.train import config_values, train_argv

    def parse(argv: list[str]):
        return build_parser().parse_args(["train", *argv])

    argv = ["--model-arg", "small_input=true", "--model-arg", "width=4", "--nproc", "2", "--lr", "0.3",
            "--sync-bn", "--no-tta", "--epochs", "3", "--dataset", "digits"]
    args = parse(argv)
    forwarded = train_argv(args)
    assert "--nproc" not in forwarded
    again = config_values(parse(forwarded))
    assert again == {k: v for k, v in config_values(args).items() if k != "nproc"}
    assert launch.torchrun_args(forwarded, 2)[:5] == ["--standalone", "--nproc-per-node=2", "--module",
                                                           "resnetkit", "train"]


def test_cpu_sync_batchnorm_is_batchnorm_outside_a_group() -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), bn)
    sync = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(sync[1], distributed.CPUSyncBatchNorm) and sync[1].weight is bn.weight
    assert list(sync.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                       "1.running_var", "1.num_batches_tracked"]
    x = torch.randn(4, 1, 6, 6)
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    ref.load_state_dict(sync.state_dict())
    assert torch.allclose(sync(x), ref(x)) and torch.allclose(sync[1].running_var, ref[1].running_var)


# ------------------------------------------------------------------ two processes (spawn)
def _ddp_worker(rank: int, port: int, phase: str, cfg: dict, out: str) -> None:
    """One rank: train (phase "first": stop after epoch 1; "resume": continue), checking after
    every optimizer step that both ranks hold the same parameters; results into a JSON file."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    import resnetkit.training.trainer as trainer_module

    result: dict = {"step_diffs": []}
    real_step = trainer_module.train_step

    def checked_step(model, *args, **kwargs):
        loss_hits = real_step(model, *args, **kwargs)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        every = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(every, flat)
        result["step_diffs"].append(max((e - flat).abs().max().item() for e in every))
        return loss_hits

    def after_epoch(trainer, record):
        result["wrapped"] = type(trainer.net).__name__
        result["unwrapped_is_model"] = trainer_module.ckpt.unwrap_model(trainer.net) is trainer.model
        result["val_count"] = trainer.evaluate(trainer.loaders.val).count
        result["test_count"] = trainer.evaluate(trainer.loaders.test).count
        if phase == "first":
            result["eval"] = _gathered_eval_checks(trainer.model, rank)
            raise KeyboardInterrupt  # an interrupted run, for the resume phase

    trainer_module.train_step = checked_step
    kw = dict(cfg, callbacks=[after_epoch])
    if phase == "resume":
        kw = dict(resume=cfg["out"], callbacks=[after_epoch], verbose=False)
    try:
        res = train(**kw)
        result.update(report=res.report, history=res.history)
    except KeyboardInterrupt:
        result["interrupted"] = True
    Path(out, f"{phase}-rank{rank}.json").write_text(json.dumps(result))


def _gathered_eval_checks(model: torch.nn.Module, rank: int) -> dict:
    """Evaluate 7 and 11 samples split over the ranks, gather, compare with one process."""
    out = {}
    for n in (7, 11):
        kw = dict(autocast=contextlib.nullcontext())
        g = torch.Generator().manual_seed(n)
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.arange(n) % 10

        def loader(r: int, w: int) -> MemoryLoader:
            return MemoryLoader(images, labels, batch_size=2, normalizer=normalizer(), train=False,
                                rank=r, world_size=w)

        part = evaluate_batches(model, loader(rank, WORLD), **kw)
        got = distributed.gather_eval(part, torch.device("cpu"))
        ref = evaluate_batches(model, loader(0, 1), **kw)
        got_m, ref_m = got.summary(), ref.summary()
        out[n] = {"local": part.count, "count": got.count, "targets": torch.equal(got.targets, ref.targets),
                  "top5": torch.equal(got.top5, ref.top5), "loss": got_m["loss"], "ref_loss": ref_m["loss"],
                  "acc": got_m["acc"], "ref_acc": ref_m["acc"]}
    return out


def spawn(phase: str, cfg: dict, out: Path, attempts: int = 3) -> list[dict]:
    """Run the ranks; free_port() releases its port before rank 0 binds it, so another process
    may take it in between: a rank that finds its port in use is retried on a new one."""
    import torch.multiprocessing as mp

    for attempt in range(attempts):
        ctx = mp.start_processes(_ddp_worker, args=(free_port(), phase, cfg, str(out)), nprocs=WORLD,
                                 join=False, start_method="spawn")
        try:
            if any(ctx.join(timeout=1) for _ in range(SPAWN_TIMEOUT_S)):
                break
            pytest.fail(f"the {phase} phase did not finish within {SPAWN_TIMEOUT_S}s")
        except mp.ProcessRaisedException as e:
            if "address already in use" not in str(e).lower() or attempt == attempts - 1:
                raise
        finally:  # every outcome but success leaves ranks behind: one place ends them
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
    return [json.loads((out / f"{phase}-rank{r}.json").read_text()) for r in range(WORLD)]


def test_ddp_replicas_stay_identical_evaluate_exactly_resume_and_match_one_process(
        tiny_mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = tmp_path / "ddp"
    cfg = tiny_cfg(tiny_mnist_root, run)

    first = spawn("first", cfg, tmp_path)
    for r in first:
        assert r["interrupted"] and r["wrapped"] == "DistributedDataParallel" and r["unwrapped_is_model"]
        # 60 samples less 6 for val / 20 per global batch
        assert len(r["step_diffs"]) == 3 and max(r["step_diffs"]) == 0.0
        assert r["test_count"] == 25  # odd: 12 on rank 0, 13 on rank 1, none twice
        assert r["val_count"] == 6
        for n, e in r["eval"].items():
            assert e["count"] == int(n) and e["targets"] and e["top5"] and e["acc"] == e["ref_acc"]
            assert e["loss"] == pytest.approx(e["ref_loss"], rel=1e-6)
        assert {r["eval"]["7"]["local"] for r in first} == {3, 4}
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]

    second = spawn("resume", cfg, tmp_path)
    for r in second:
        assert len(r["step_diffs"]) == 3 and max(r["step_diffs"]) == 0.0
        assert r["test_count"] == 25 and r["val_count"] == 6 and [h["epoch"] for h in r["history"]] == [1, 2]
    report = second[0]["report"]
    assert second[1]["report"] == {}  # only rank 0 reports
    assert report["num_samples"] == 25 and sum(sum(row) for row in report["confusion_matrix"]) == 25
    assert json.loads((run / "config.json").read_text())["nproc"] == WORLD
    assert not any(k.startswith("module.") for k in weights(run / "last.safetensors"))

    one = train(**tiny_cfg(tiny_mnist_root, tmp_path / "one"))
    a, b = weights(one.run_dir / "last.safetensors"), weights(run / "last.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"max |weight difference| 1 process vs 2 (sync-bn, resumed): {diff:.3g}")
    assert diff < WEIGHT_ATOL


# ------------------------------------------------------------------ the --nproc launcher
def resnetkit(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnetkit", *args], cwd=cwd, env=child_env(**env),
                          capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def test_nproc_2_from_the_command_line_writes_one_complete_run_folder(tmp_path: Path) -> None:
    proc = resnetkit(["train", "--nproc", "2", "--dataset", "digits", "--epochs", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # both ranks agreed on rank 0's timestamped name; only rank 0 wrote
    run = runs[0]
    for name in ("config.json", "classes.json", "metrics.jsonl", "best.safetensors", "last.safetensors",
                 "state.pt", "curves.png", "confusion.png", "report.json"):
        assert (run / name).is_file(), name
    assert proc.stdout.count("epoch 1/1") == 1 and proc.stdout.count("chosen on val") == 1
    config = json.loads((run / "config.json").read_text())
    assert config["nproc"] == 2 and config["batch_size"] == 64  # the global batch, as asked
    report = json.loads((run / "report.json").read_text())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert report["num_samples"] == 360 and report["val"]["top1"] == history[0]["val_acc"]
    assert report["data"]["val_size"] == 144 and report["selected_on"] == "val"


# Started before anything else in each process on PYTHONPATH: rank 1 dies in its second step.
DYING_RANK = """
import os
if os.environ.get("RANK") == "1":
    import resnetkit.training.trainer as trainer
    step, calls = trainer.train_step, []

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os._exit(1)
        return step(*args, **kwargs)

    trainer.train_step = dying_step
"""


def test_a_dying_rank_fails_the_launch_fast_with_one_clear_line(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DYING_RANK)
    path = os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = resnetkit(["train", "--nproc", "2", "--subset", "200", "--epochs", "1", "--out", "r"], tmp_path,
                     **{"PYTHONPATH": path, distributed.TIMEOUT_ENV: "60"})
    assert proc.returncode == 1
    assert "resnetkit: error: training process 1 of 2 exited with status 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
