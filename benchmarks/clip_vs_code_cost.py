"""Cost of a CLIP reward vs. a code reward, per environment step, on this machine.

CLIP side: a randomly initialised CLIP with ViT-B/32 sizes (vision: hidden 768, 12 layers,
12 heads, patch 32, image 224; text: hidden 512, 12 layers, 8 heads; projection 512), saved to a
temporary directory and loaded through ``cleanrl_vlmcar.clip_reward.ClipReward`` exactly as a
real checkpoint would be.  Random weights cost the same FLOPs as trained ones.  The tokenizer is
a tiny character-level one made on the spot (its text embeddings are computed once in
``ClipReward.__init__`` and do not enter the per-frame cost); the text tower therefore gets 256
positions so the character-level prompts are not truncated.

Frames come from 8 ``MiniGrid-KeyCorridorS3R1-v0`` envs stepped with random actions
(``env.unwrapped.get_frame(highlight=False, tile_size=16)``, 48x112 RGB).  The CLIP reward is
timed end to end (pad to square, CLIP image processor, image tower, softmax) batched over the 8
envs and one frame at a time, with torch's default thread count and again with 1 thread (on a
small machine shared with other jobs, multi-threaded timings swing widely; the 1-thread rows and
the min column are the steadier figures; the load average is printed and stored).

Code side: the verified program that training uses (the newest passing `reward_cache/` entry for
``MiniGrid-KeyCorridorS3R1-v0``, state view; ``--program FILE`` times a program file in the project's format
instead), on views built by the project's own state-view adapter along random-action episodes. The program runs
only in the confined worker (`cleanrl_vlmcar.confine`), so what is timed is what the reward hook pays per vector
step: one message with every env's view to the worker, the next sub-task's checks there, and the fixed-size reply
(per frame = per vector step / envs); then the same round trip with a trivial program (the boundary's own cost),
and building the view.

Writes a Markdown table to stdout and the rows as JSON to
``benchmarks/results/clip_vs_code_cost.json``.

    python benchmarks/clip_vs_code_cost.py [--reps 10] [--program FILE] [--clip-model DIR] [--out PATH]

`--clip-model DIR` times that checkpoint instead of the random ViT-B/32 (for instance one `clip-train` made; its
row names and the JSON say which), and writes ``benchmarks/results/clip_vs_code_cost_{DIR name}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import string
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ENV_ID = "MiniGrid-KeyCorridorS3R1-v0"
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------ code side
def load_verified_program(path: str | None, env):
    """(RewardProgram, description): FILE in the project's format, or the shipped verified cache entry."""
    from cleanrl_vlmcar import cache
    from cleanrl_vlmcar.program import load_program
    from cleanrl_vlmcar.views import get_spec

    constants = get_spec(env, "state").constants()
    if path:
        return load_program(Path(path).read_text(), constants, os.path.basename(path)), os.path.basename(path)
    found = cache.lookup(ENV_ID, "state")
    if found is None:
        raise SystemExit(f"error: no verified program for {ENV_ID} (state) in the reward cache; pass --program FILE")
    entry_path, entry = found
    return load_program(entry["program"], constants, entry_path.name), f"verified cache entry {entry_path.name}"


# ------------------------------------------------------------------------------ CLIP side
def build_vitb32_checkpoint(out_dir: str) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=8, max_position_embeddings=256,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
            num_hidden_layers=12, num_attention_heads=12,
        ),
        projection_dim=512,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(name, unit, per_item_samples, batch, notes=""):
    a = np.asarray(per_item_samples, dtype=np.float64)
    return {
        "measurement": name,
        "batch": batch,
        "unit": unit,
        "median": float(np.median(a)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "samples": int(a.size),
        "notes": notes,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-envs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="random steps per env to collect frames/views")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions of each CLIP measurement")
    ap.add_argument("--program", default=None, help="a reward program file (default: the shipped verified one)")
    ap.add_argument("--code-steps", type=int, default=300, help="random steps per env for the code-side views")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-single-thread", action="store_true", help="skip the extra 1-thread CLIP measurement")
    ap.add_argument("--clip-model", default=None, help="time this CLIP checkpoint (hub id or folder) instead")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/clip_vs_code_cost[_NAME].json)")
    args = ap.parse_args(argv)

    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the envs)
    import torch
    import transformers

    from cleanrl_vlmcar.clip_reward import ClipReward, ClipRewardConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    rows = []

    # ---- environments: frames (CLIP) and the project's state views (code)
    from cleanrl_vlmcar.confine import ProgramWorker
    from cleanrl_vlmcar.program import load_program
    from cleanrl_vlmcar.views import make_view

    envs = [gym.make(ENV_ID) for _ in range(args.n_envs)]
    program, prog_name = load_verified_program(args.program, envs[0])
    worker = ProgramWorker(program)
    rng = np.random.default_rng(0)
    adapters = [make_view(e, "state") for e in envs]
    for i, e in enumerate(envs):
        e.reset(seed=i)
        e.unwrapped.get_frame(highlight=False, tile_size=16)  # warm the tile cache
    mission = envs[0].unwrapped.mission
    frames, render_s, view_s = [], [], []
    # the hook's messages, replayed below in order: (env, next sub-task or -1 for a new episode, view, None)
    batches_code = [[(j, -1, adapters[j].reset(), None) for j in range(args.n_envs)]]
    next_k = worker.step(batches_code[0], args.n_envs, False, 10.0)[1]
    for t in range(max(args.steps, args.code_steps)):
        step_frames, items = [], []
        for j, e in enumerate(envs):
            _, _, term, trunc, _ = e.step(int(rng.integers(e.action_space.n)))
            if term or trunc:
                e.reset()
                items.append((j, -1, adapters[j].reset(), None))
                continue
            if t < args.steps:
                t0 = time.perf_counter()
                step_frames.append(e.unwrapped.get_frame(highlight=False, tile_size=16))
                render_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            view = adapters[j].step()
            view_s.append(time.perf_counter() - t0)
            items.append((j, int(next_k[j]), view, None))
        batches_code.append(items)
        next_k = worker.step(items, args.n_envs, False, 10.0)[1]
        if step_frames:
            frames.append(np.stack(step_frames))
    frames = [f for f in frames if len(f) == args.n_envs] or frames
    fshape = frames[0].shape[1:]

    # ---- CLIP
    with tempfile.TemporaryDirectory(prefix="clip_vitb32_random_") as ckpt:
        t0 = time.perf_counter()
        if args.clip_model:
            ckpt, clip_name = args.clip_model, f"CLIP {Path(args.clip_model).name}"
        else:
            build_vitb32_checkpoint(ckpt)
            clip_name = "CLIP ViT-B/32"
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reward = ClipReward(ClipRewardConfig(model=ckpt, device="cpu"), mission=mission)
        t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in reward.model.vision_model.parameters()) + reward.model.visual_projection.weight.numel()

    batches = [frames[i % len(frames)] for i in range(args.reps)]
    ms = 1e3
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] + ([1] if default_threads > 1 and not args.no_single_thread else [])
    clip_rows = {}
    for nt in thread_counts:
        torch.set_num_threads(nt)
        reward(batches[0])  # warm-up
        reward(batches[0][:1])
        it = iter(range(10**9))
        b_samples = [s / args.n_envs for s in timed(lambda: reward(batches[next(it) % len(batches)]), args.reps)]
        single = []
        for b in batches:
            for f in b:
                t0 = time.perf_counter()
                reward(f[None])
                single.append(time.perf_counter() - t0)
        tag = f"{nt} thread{'s' if nt > 1 else ''}"
        clip_rows[(nt, "batched")] = row(f"{clip_name} reward, batched over envs ({tag})", "ms/frame",
                                         [s * ms for s in b_samples], args.n_envs,
                                         "end to end: pad + processor + image tower + softmax")
        clip_rows[(nt, "single")] = row(f"{clip_name} reward, one frame at a time ({tag})", "ms/frame",
                                        [s * ms for s in single], 1, "")
    torch.set_num_threads(default_threads)
    pre_samples = [s / args.n_envs for s in timed(lambda: reward.preprocess(batches[0]), max(3, args.reps // 2))]
    for nt in thread_counts:
        rows.append(clip_rows[(nt, "batched")])
        rows.append(clip_rows[(nt, "single")])
    rows.append(row("CLIP preprocessing only (pad + CLIP processor)", "ms/frame", [s * ms for s in pre_samples],
                    args.n_envs, "PIL backend (no torchvision)" if "Pil" in type(reward.image_processor).__name__ else ""))
    rows.append(row("render frame (get_frame, tile 16)", "ms/frame", [s * ms for s in render_s], 1,
                    f"{fshape[0]}x{fshape[1]} RGB; needed by CLIP only"))

    # ---- code: the hook's round trips to the confined worker, replayed in order (the worker keeps start views)
    K = program.num_subtasks

    def time_round_trips(w, batches):
        out = []
        for _ in range(5):
            t0 = time.perf_counter()
            for items in batches:
                w.step(items, args.n_envs, False, 10.0)
            out.append((time.perf_counter() - t0) / (len(batches) * args.n_envs) * 1e6)
        return out

    trivial = ProgramWorker(load_program("SUBTASKS = ['never']\ndef subtask_1(obs, start):\n    return False\n"))
    # the trivial program has one sub-task: the same views, with the next sub-task index that program would have
    trivial_batches = [[(i, min(k, 0), v, st) for i, k, v, st in items] for items in batches_code]
    hook_us, trip_us = time_round_trips(worker, batches_code), time_round_trips(trivial, trivial_batches)
    worker.close()
    trivial.close()
    share = np.bincount([k for items in batches_code for _, k, _, _ in items if k >= 0], minlength=K + 1)
    share = share / share.sum()
    rows.append(row("code: verified program in the confined worker, per frame (hook's round trip / envs)",
                    "us/step", hook_us, args.n_envs,
                    f"{prog_name}; steps by next sub-task: " + ", ".join(f"{x:.0%}" for x in share)))
    rows.append(row("  of which the worker round trip itself (trivial program)", "us/step", trip_us, args.n_envs,
                    "pickled views out, fixed-size reply back"))
    rows.append(row("  build the state view (project's incremental adapter)", "us/step",
                    [s * 1e6 for s in view_s], 1, "MiniGridStateView.step"))

    code_row, view_row = rows[-3], rows[-1]
    ratios = {}
    for nt in thread_counts:
        for kind in ("batched", "single"):
            r = clip_rows[(nt, kind)]
            ratios[f"clip_{kind}_{nt}t_over_code_check_median"] = r["median"] * 1e3 / code_row["median"]
            ratios[f"clip_{kind}_{nt}t_over_code_check_min"] = r["min"] * 1e3 / code_row["min"]
    ratios[f"clip_batched_{default_threads}t_over_code_check_plus_view_median"] = (
        clip_rows[(default_threads, "batched")]["median"] * 1e3 / (code_row["median"] + view_row["median"])
    )

    # ---- report
    print(f"\nCLIP vs code reward cost on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} (default {default_threads} threads), "
          f"transformers {transformers.__version__}; env {ENV_ID}, {args.n_envs} envs, mission {mission!r}\n")
    print("| measurement | batch | median | mean | min | samples | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['measurement']} | {r['batch']} | {r['median']:.3g} {r['unit']} | {r['mean']:.3g} | "
              f"{r['min']:.3g} | {r['samples']} | {r['notes']} |")
    print()
    for nt in thread_counts:
        for kind in ("batched", "single"):
            print(f"ratio CLIP ({kind}, {nt} thread{'s' if nt > 1 else ''}) / code reward in the worker: "
                  f"{ratios[f'clip_{kind}_{nt}t_over_code_check_median']:,.0f}x (medians), "
                  f"{ratios[f'clip_{kind}_{nt}t_over_code_check_min']:,.0f}x (minima)")
    print(f"ratio CLIP (batched, {default_threads} threads) / (code check + building its view): "
          f"{ratios[f'clip_batched_{default_threads}t_over_code_check_plus_view_median']:,.0f}x (medians)")
    total = time.perf_counter() - t_start
    load_end = os.getloadavg()
    busy = max(load_start[0], load_end[0]) > (os.cpu_count() or 1)
    print(f"\nload average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} on {os.cpu_count()} CPUs"
          + (": the machine was busy with other processes, CLIP timings (multi-threaded) are inflated; "
             "compare the min column or rerun on an idle machine" if busy else ""))
    print(f"\n(checkpoint {'given' if args.clip_model else f'built in {t_build:.1f} s'}, loaded through ClipReward in "
          f"{t_load:.1f} s; "
          f"image tower {n_params / 1e6:.1f} M params; total run {total:.0f} s)")

    name = "" if not args.clip_model else "_" + Path(args.clip_model).name
    out = Path(args.out or HERE / "results" / f"clip_vs_code_cost{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "clip_vs_code_cost",
        "env": ENV_ID,
        "n_envs": args.n_envs,
        "mission": mission,
        "frame_shape": list(map(int, fshape)),
        "clip_config": (f"{args.clip_model} (as given), fp32, CPU" if args.clip_model
                        else "ViT-B/32 sizes, random weights, image 224, fp32, CPU"),
        "clip_image_params_millions": round(n_params / 1e6, 2),
        "program": prog_name,
        "rows": rows,
        "ratios": ratios,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": default_threads,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "loadavg_1min_start": load_start[0],
            "loadavg_1min_end": load_end[0],
        },
        "timings_s": {"build_checkpoint": t_build, "load": t_load, "total": total},
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
