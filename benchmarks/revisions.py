"""Is the working tree faster than another revision? A paired, in-process A/B (CPU or CUDA).

The package of ``--base REV`` is extracted (``git archive``) and imported next to the working
tree's as ``robustmix_base`` (its absolute imports renamed), so both run in one process on the
same inputs. Each case first checks that both give the same values to the bit, then times them
in alternating rounds and reports the median of the per-round ratios: on the shared VMs this
project is measured on, the speed drifts by tens of percent within minutes, which two separate
runs cannot tell from a change. Cases: the op at the three mixing sizes and on a 2x1x4x4 batch
(its fixed cost a call: checks and dispatch), and the MixUp, CutMix and RobustMix mixers (RobustMix
also per sample) at the two small sizes, where per-call overhead shows. A diagnosis for one change,
printed; the peer comparisons are ``mixing.py`` and friends. ``--device cuda`` runs the same
cases on a GPU (each call synchronised; values compared as there computed). ``--corruptions``
pairs the named corruptions instead (severity 3 on the suite's 8-bit images and batches: 8 at
224 px, 32 at 32 px, as ``corruptions.py``).

    python benchmarks/revisions.py --base 4d0d44f
    python benchmarks/revisions.py --base a53b29f --device cuda
    python benchmarks/revisions.py --base 68852ca --corruptions pixelate,jpeg_compression
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OP_SHAPES = ((128, 3, 224, 224), (512, 3, 32, 32), (256, 1, 28, 28))
MIXER_SHAPES = OP_SHAPES[1:]
FIXED_COST_SHAPE = (2, 1, 4, 4)  # almost no work: the op's fixed cost a call (checks, dispatch)


def import_revision(rev: str, into: Path, name: str = "robustmix_base") -> Any:
    """The ``robustmix`` package of git revision ``rev``, imported as ``name``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/robustmix"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / name
    (into / "src" / "robustmix").rename(package)
    pattern = re.compile(r"\brobustmix(?=[.\s])")  # `import robustmix.x`, `from robustmix import`
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text("\n".join(pattern.sub(name, line) if re.match(r"\s*(from|import)\s", line) else line
                                  for line in text.splitlines()) + "\n")
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]  # an earlier import of another revision
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def paired(base: Callable[[], Any], head: Callable[[], Any], rounds: int, calls: int,
           sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median times and the median (and quartiles) of per-round ratios base / head; ``sync``
    waits for queued device work (before and after each timed call)."""
    for fn in (base, head):
        for _ in range(2):
            fn()
    sync()
    times: dict[str, list[float]] = {"base": [], "head": []}
    for r in range(rounds):
        order = (("base", base), ("head", head)) if r % 2 == 0 else (("head", head), ("base", base))
        for key, fn in order:
            one = []
            for _ in range(calls):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                one.append(time.perf_counter() - start)
            times[key].append(float(np.median(one)))
    ratio = np.array(times["base"]) / np.array(times["head"])
    return {"base_ms": 1e3 * float(np.median(times["base"])), "head_ms": 1e3 * float(np.median(times["head"])),
            "speedup": float(np.median(ratio)), "q1": float(np.percentile(ratio, 25)),
            "q3": float(np.percentile(ratio, 75))}


def same(a: Any, b: Any) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def cases(base: Any, head: Any, quick: bool,
          device: str | torch.device = "cpu") -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    out = []
    g = torch.Generator().manual_seed(0)
    for shape in ((8, 3, 32, 32),) if quick else (*OP_SHAPES, FIXED_COST_SHAPE):
        x, n = torch.rand(shape, generator=g).to(device), shape[0]
        y, index = torch.randint(0, 10, (n,), generator=g).to(device), torch.randperm(n, generator=g).to(device)
        kw = dict(lam_low=0.7, lam_high=0.2, cutoff=0.5, num_classes=10, index=index)
        out.append((f"op B{n}x{shape[1]}x{shape[2]}^2",
                    lambda x=x, y=y, kw=kw: base.functional.robustmix(x, y, **kw),
                    lambda x=x, y=y, kw=kw: head.functional.robustmix(x, y, **kw)))
    for shape in ((8, 3, 32, 32),) if quick else MIXER_SHAPES:
        x, y = torch.rand(shape, generator=g).to(device), torch.randint(0, 10, (shape[0],), generator=g).to(device)
        for cls, opts in (("MixUp", {}), ("CutMix", {}), ("RobustMix", {}), ("RobustMix", {"per_sample": True})):
            a, b = getattr(base, cls)(10, seed=0, **opts), getattr(head, cls)(10, seed=0, **opts)
            mode = " per-sample" if opts else ""
            out.append((f"{cls}{mode} B{shape[0]}x{shape[1]}x{shape[2]}^2",
                        lambda a=a, x=x, y=y: a(x, y), lambda b=b, x=x, y=y: b(x, y)))
    return out


CORRUPTION_BATCHES = ((8, 224), (32, 32))  # (batch, px): the corruption suite's


def corruption_cases(base: Any, names: list[str], quick: bool,
                     device: str | torch.device = "cpu") -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    """Each named corruption of both revisions on the suite's 8-bit images (a fresh seeded
    generator a call, so random corruptions draw the same)."""
    import corruptions as suite  # the sibling script: its images
    from robustmix.corruptions import corrupt

    base_corrupt = importlib.import_module(f"{base.__name__}.corruptions").corrupt
    out = []
    for batch, size in ((2, 32),) if quick else CORRUPTION_BATCHES:
        levels = suite.smooth_images(batch, size).mul(255).round().div(255).to(device)
        for name in names:
            def call(fn: Callable[..., Any], x: torch.Tensor = levels, name: str = name) -> tuple[Any, ...]:
                return (fn(x, name, 3, generator=torch.Generator().manual_seed(0)),)

            out.append((f"{name} B{batch} {size}px", lambda call=call: call(base_corrupt), lambda call=call: call(corrupt)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=30, help="alternating rounds per case (default 30)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per round (default 10)")
    parser.add_argument("--quick", action="store_true", help="one tiny case of each kind, few rounds: a smoke run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the batches live (default cpu)")
    parser.add_argument("--corruptions", default=None, metavar="NAME[,NAME...]",
                        help="pair these corruptions instead of the op and the mixers")
    args = parser.parse_args(argv)
    names = None
    if args.corruptions is not None:
        from robustmix.corruptions import ALL_CORRUPTIONS

        names = [n.strip() for n in args.corruptions.split(",")]
        unknown = [n for n in names if n not in ALL_CORRUPTIONS]
        if unknown or not names:
            parser.error(f"--corruptions: unknown {unknown or names}; expected names from {list(ALL_CORRUPTIONS)}")
    if args.rounds < 2 or args.calls < 1:
        parser.error("--rounds must be >= 2 and --calls >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU (torch.cuda.is_available() is False)")
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    head = importlib.import_module("robustmix")
    with tempfile.TemporaryDirectory() as tmp:
        base = import_revision(args.base, Path(tmp))
        print(f"working tree vs {args.base} on {device.type}, {torch.get_num_threads()} torch threads; "
              "speed-up = base time / working-tree time, median of paired rounds (quartiles)")
        rounds = 2 if args.quick else args.rounds
        chosen = (corruption_cases(base, names, args.quick, device) if names is not None
                  else cases(base, head, args.quick, device))
        for name, run_base, run_head in chosen:
            if not same(run_base(), run_head()):
                print(f"  {name:<26} DIFFERENT VALUES: not a like-for-like comparison")
                continue
            r = paired(run_base, run_head, rounds, args.calls, sync)
            print(f"  {name:<26} base {r['base_ms']:9.3f} ms  tree {r['head_ms']:9.3f} ms  "
                  f"{r['speedup']:.3f}x ({r['q1']:.3f}-{r['q3']:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
