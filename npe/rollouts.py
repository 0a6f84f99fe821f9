"""Autoregressive rollouts and the metrics that compare them with the truth."""
import math

import numpy as np
import pandas as pd
import torch

from .cli import NPEError
from .config import MASS, POS, VEL, World, is_ball
from .models import integrate, kinetic_energy, position_step
from .sim import next_velocities, simulate_from


@torch.no_grad()
def rollout(model, frames, steps):
    """frames [B, 2, N, 5] (normalized, t-1 and t) -> predicted states [B, steps, N, 5].

    Positions and velocities come from the model: a velocity model places each ball at
    x(t+1) = x(t) + v(t+1) dt, the simulator's own step in free flight but not within a frame where a
    collision happens (its sub-steps move the ball before and after the bounce); a next-state model
    predicts the position itself. Mass is carried over; blocks and padding stay where they are. `model`
    may also be a velocity rule such as ConstantVelocity.
    """
    if steps < 1:
        raise NPEError(f"a rollout takes at least one step, not {steps}")
    window, out = frames, []
    for _ in range(steps):
        window = step(model, window)
        out.append(window[:, 1])
    return torch.stack(out, dim=1)


def step(model, window):
    """One rollout step: window [B, 2, N, 5] (t-1, t) -> [B, 2, N, 5] (t, predicted t+1)."""
    return advance(window, model(window, positions=True))


def advance(window, pred):
    """window [B, 2, N, 5] (t-1, t) and the predicted positions and velocities at t+1 pred [B, N, 4] -> the
    next window [B, 2, N, 5] (t, t+1), masses carried over."""
    state = torch.cat([pred, window[:, 1, :, MASS:]], dim=-1)  # [B, N, 5]
    return torch.stack([window[:, 1], state], dim=1)


class VelocityRule:
    """A rule for the next velocity that rolls out as a velocity model does (see rollout)."""

    pos_step = None

    def __call__(self, frames, positions=False):
        vel = self.velocity(frames)  # [B, N, 2]
        return torch.cat([integrate(frames, vel, self.pos_step), vel], dim=-1) if positions else vel

    def refuses(self, scenes):
        return None


class SimulatorOracle(VelocityRule):
    """The ceiling of the velocity protocol: at every step, the simulator's own next velocity from the
    rolled-out state (one pymunk frame from its positions and velocities), integrated as a velocity
    model's output is. Within a frame where a collision happens the integration is not the simulator's,
    so even this drifts from the truth; the recorded scene's velocities would score a meaningless 1."""

    def __init__(self, meta):
        self.world, self.pos_step = World.from_dict(meta["world"]), position_step(meta)
        self.scale = torch.tensor(meta["state_scale"], dtype=torch.float64)

    def velocity(self, frames):
        raw = (frames[:, 1].double() * self.scale).numpy()  # [B, N, 5] px, px/s
        vel = np.stack([next_velocities(self.world, scene) for scene in raw])  # [B, N, 2] px/s
        return torch.as_tensor(vel / self.scale[VEL].numpy(), dtype=frames.dtype)


class ConstantVelocity(VelocityRule):
    """The baseline: every ball keeps its last velocity."""

    def __init__(self, pos_step):
        self.pos_step = pos_step

    def velocity(self, frames):
        return frames[:, 1, :, VEL]


def velocity_metrics(pred, truth, scene_sums=None):
    """pred, truth [B, T, N, 5] -> {metric: [T]}: cosine similarity, relative magnitude error (mean,
    median), and the 95% intervals of the two means (their _low and _high) over the scenes.

    All are taken per ball and step, blocks and padding left out; relative magnitude error is
    | |v| - |v_pred| | / |v|, heavy-tailed when a true ball nearly stops, hence the median beside the
    mean.
    """
    v, p = truth[..., VEL], pred[..., VEL]
    cos = torch.nn.functional.cosine_similarity(p, v, dim=-1, eps=1e-12)  # [B, T, N]
    speed = v.norm(dim=-1)
    rel = (speed - p.norm(dim=-1)).abs() / speed.clamp_min(1e-12)
    moving = is_ball(truth[:, 0])  # [B, N]
    per_step = lambda x: x.transpose(0, 1)[:, moving]  # [T, balls]
    metrics = {"cosine_similarity": per_step(cos).mean(1), "relative_magnitude_error": per_step(rel).mean(1),
               "relative_magnitude_error_median": per_step(rel).median(1).values}
    counts = moving.sum(-1).double()  # [B]
    for name, values in (("cosine_similarity", cos), ("relative_magnitude_error", rel)):
        sums = (values.double() * moving[:, None]).sum(-1)  # [B, T]
        metrics[f"{name}_low"], metrics[f"{name}_high"] = bootstrap_interval(sums, counts)
        if scene_sums is not None:
            scene_sums[name] = sums
    return metrics


def bootstrap_interval(sums, counts, draws=1000):
    """The 95% interval [2, T] of sums.sum(0) / counts.sum(), a mean over balls, with the scenes (rows of
    sums [S, T], counts [S]) resampled with replacement; seeded, so a table regenerates exactly."""
    generator, means = torch.Generator().manual_seed(0), []
    for _ in range(draws // 100):  # 100 resamples at a time: [100, S, T] stays small
        picked = torch.randint(len(sums), (100, len(sums)), generator=generator)
        means.append(sums[picked].sum(1) / counts[picked].sum(1, keepdim=True))
    return torch.quantile(torch.cat(means), torch.tensor([0.025, 0.975], dtype=sums.dtype), dim=0)


def compare(models, scenes, steps, meta=None, reference="simulator_oracle"):
    """models {name: model}, scenes [S, 2 + steps, N, 5] -> DataFrame of per-step metrics: velocity_metrics;
    with the scenes' dataset metadata `meta` also physics_metrics; and where one of the models is named
    `reference`, each other model's paired difference to it (paired_differences)."""
    start, truth = scenes[:, :2], scenes[:, 2:2 + steps]
    rows, sums = [], {}
    for name, model in models.items():
        pred = rollout(model, start, steps)
        metrics = velocity_metrics(pred, truth, sums.setdefault(name, {}))
        if meta is not None:
            metrics.update(physics_metrics(pred, truth, meta))
        rows.append(metric_rows(name, metrics))
    table = pd.concat(rows, ignore_index=True)
    if reference not in models:
        return table
    counts = is_ball(scenes[:, 1]).sum(-1).double()  # [S]
    return table.merge(paired_differences(sums, reference, counts), on=["model", "step"], how="left")


def paired_differences(sums, reference, counts):
    """Each model's mean minus the reference model's, per step, with a 95% interval from resampling whole
    scenes (both rollouts of a scene drawn together, so what the scenes share cancels): sums {model:
    {metric: [S, T] per-scene sums over balls}}, counts [S] -> DataFrame rows (model, step, METRIC_vs_REF,
    its _low and _high) for cosine similarity and relative magnitude error."""
    rows = []
    for name, metrics in sums.items():
        if name == reference:
            continue
        row = {"model": name, "step": range(1, next(iter(metrics.values())).shape[1] + 1)}
        for metric, values in metrics.items():
            diff = values - sums[reference][metric]  # [S, T]
            column = f"{metric}_vs_{reference}"
            row[column] = (diff.sum(0) / counts.sum()).tolist()
            low, high = bootstrap_interval(diff, counts)
            row[f"{column}_low"], row[f"{column}_high"] = low.tolist(), high.tolist()
        rows.append(pd.DataFrame(row))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["model", "step"])


def penetrations(states, meta):
    """states [B, T, N, 5] (normalized) -> (overlap [B, T], through [B, T]) in px: the deepest overlap of two
    balls in each frame, and the deepest that a ball reaches through a wall of the box or into a block
    (0 where nothing overlaps). Blocks are the objects of mass 0, squares of side world.block_size."""
    world = World.from_dict(meta["world"])
    px = states[..., POS].double() * meta["state_scale"][0]  # [B, T, N, 2]
    balls, blocks = is_ball(states), states[..., MASS] == 0  # [B, T, N]
    n = states.shape[-2]
    eye = torch.eye(n, dtype=torch.bool)
    apart = (px[..., None, :, :] - px[..., :, None, :]).norm(dim=-1)  # [B, T, N, N]
    pairs = balls[..., None, :] & balls[..., :, None] & ~eye
    overlap = torch.where(pairs, 2 * world.radius - apart, 0.0).amax((-1, -2)).clamp_min(0)
    size = px.new_tensor([world.width, world.height])
    walls = torch.maximum(world.radius - px, px + world.radius - size).amax(-1)  # [B, T, N]: depth past a wall
    # Signed distance from each ball's centre to each block's square: negative inside it.
    q = (px[..., :, None, :] - px[..., None, :, :]).abs() - world.block_size / 2  # [B, T, ball, block, 2]
    signed = q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)  # [B, T, N, N]
    into = torch.where(blocks[..., None, :], world.radius - signed, -math.inf).amax(-1)  # [B, T, N]
    through = torch.where(balls, torch.maximum(walls, into), 0.0).amax(-1).clamp_min(0)
    return overlap, through


PENETRATION_PX = 1.0  # a frame counts as overlapping (or through a wall) past this depth: rounding is not overlap


def physics_metrics(pred, truth, meta):
    """pred, truth [B, T, N, 5] -> {metric: [T]}: the balls' total kinetic energy predicted / true per scene
    (mean, 5th and 95th percentile over the scenes), and the share of scenes whose predicted frame has two
    balls overlapping, or a ball through a wall or into a block, by more than PENETRATION_PX, with the
    deepest of each in px. The simulated balls are elastic: the truth keeps its energy within about 1%."""
    true = kinetic_energy(truth[..., MASS], truth[..., VEL]).clamp_min(1e-12)  # [B, T]
    ratio = (kinetic_energy(pred[..., MASS], pred[..., VEL]) / true).double()
    low, high = torch.quantile(ratio, torch.tensor([0.05, 0.95], dtype=ratio.dtype), dim=0)
    overlap, through = penetrations(pred, meta)
    return {"energy_ratio": ratio.mean(0), "energy_ratio_p5": low, "energy_ratio_p95": high,
            "overlap_share": (overlap > PENETRATION_PX).double().mean(0), "overlap_deepest_px": overlap.amax(0),
            "through_wall_share": (through > PENETRATION_PX).double().mean(0),
            "through_wall_deepest_px": through.amax(0)}


def metric_rows(name, metrics):
    """velocity_metrics() of `name` as DataFrame rows, one per step."""
    return pd.DataFrame({"model": name, "step": range(1, len(next(iter(metrics.values()))) + 1),
                         **{k: v.tolist() for k, v in metrics.items()}})


def chaos_name(position_px, velocity_px):
    """The name of chaos_reference's rows."""
    return f"simulator, noise {position_px:g} px, {velocity_px:g} px/frame"


def chaos_reference(meta, scenes, steps, position_px=0.0, velocity_px=0.0, seed=0):
    """The simulator against itself: metric rows of each scene simulated on from its true state at t
    (scenes [S, 2 + steps, N, 5], frame 1) with Gaussian noise of std `position_px` px on the balls'
    positions and `velocity_px` px/frame on their velocities. How fast this world's chaos alone takes a
    perfect model of it away from the truth."""
    world, scale = World.from_dict(meta["world"]), np.array(meta["state_scale"])
    raw = scenes[:, 1].double().numpy() * scale  # [S, N, 5] px, px/s
    balls = raw[..., MASS, None] > 0
    noise = np.random.default_rng(seed).normal(size=(2, *raw.shape[:2], 2))
    raw[..., POS] += noise[0] * position_px * balls
    raw[..., VEL] += noise[1] * velocity_px / world.dt * balls
    pred = np.stack([simulate_from(world, scene, steps) for scene in raw]) / scale  # [S, steps, N, 5]
    metrics = velocity_metrics(torch.as_tensor(pred, dtype=scenes.dtype), scenes[:, 2:2 + steps])
    return metric_rows(chaos_name(position_px, velocity_px), metrics)


FRAME_KINDS = ("free flight", "wall bounce", "ball-ball collision")


def frame_kinds(windows, meta, chunk=65536):
    """windows [W, 3, N, 5] -> [W, N]: what happens to each ball between t and t+1, as an index into
    FRAME_KINDS; -1 for blocks and padding. A ball whose velocity changes by more than 0.01 px/frame
    collided: with a ball if another ball's centre was within two radii plus their relative travel in
    a frame (and 1 px) at t or t+1, else with a wall or block."""
    world = World.from_dict(meta["world"])
    scale = torch.tensor(meta["state_scale"], dtype=torch.float64, device=windows.device)
    eye = torch.eye(windows.shape[2], dtype=torch.bool, device=windows.device)
    kinds = []
    for part in windows.split(chunk):
        px = part[:, 1:].double() * scale  # [W, 2, N, 5]: t and t+1, px and px/s
        changed = (px[:, 1, :, VEL] - px[:, 0, :, VEL]).norm(dim=-1) * world.dt > 0.01  # [W, N]
        apart = (px[:, :, None, :, POS] - px[:, :, :, None, POS]).norm(dim=-1)  # [W, 2, N, N]
        closing = (px[:, :, None, :, VEL] - px[:, :, :, None, VEL]).norm(dim=-1) * world.dt
        balls = is_ball(part[:, 1])  # [W, N]
        others = balls[:, None, :] & ~eye  # [W, N, N]
        touching = ((apart <= 2 * world.radius + closing + 1.0).any(1) & others).any(-1)  # [W, N]
        kinds.append(torch.where(balls, torch.where(changed, torch.where(touching, 2, 1), 0), -1))
    return torch.cat(kinds)


@torch.no_grad()
def one_step_by_frame(models, windows, meta, chunk=16384):
    """models {name: model}, windows [W, 3, N, 5] -> DataFrame: per model and FRAME_KINDS kind, the
    balls' one-step velocity error (px/frame) and position error (px), mean and RMS. A velocity model's
    position is x(t) + v(t+1) dt, the rule a rollout uses."""
    scale = torch.tensor(meta["state_scale"])
    vel_px = scale[VEL.start] * meta["dt"]  # px/frame per normalized velocity unit
    kinds = frame_kinds(windows, meta).flatten()  # [W * N]
    rows = []
    for name, model in models.items():
        pred = torch.cat([model(part[:, :2], positions=True) for part in windows.split(chunk)])  # [W, N, 4]
        errors = {"velocity error px/frame": (pred[..., 2:] - windows[:, 2, :, VEL]).norm(dim=-1) * vel_px,
                  "position error px": (pred[..., :2] - windows[:, 2, :, POS]).norm(dim=-1) * scale[0]}
        for k, kind in enumerate(FRAME_KINDS):
            picked = {what: e.flatten()[kinds == k].double() for what, e in errors.items()}
            row = {"model": name, "frame": kind, "balls": int((kinds == k).sum())}
            for what, e in picked.items():
                row[f"{what} mean"], row[f"{what} RMS"] = e.mean().item(), e.pow(2).mean().sqrt().item()
            rows.append(row)
    return pd.DataFrame(rows)


def frames_markdown(table):
    """one_step_by_frame() rows -> a Markdown table: per model, the RMS one-step velocity and position
    error in each kind of frame, each kind's share of the balls in its column."""
    kinds = list(dict.fromkeys(table.frame))
    counts = table.groupby("frame", sort=False).balls.first()
    columns = {"velocity error px/frame RMS": "velocity px/frame", "position error px RMS": "position px"}
    head = ["model"] + [f"{short}, {kind} ({counts[kind] / counts.sum():.1%})"
                        for short in columns.values() for kind in kinds]
    lines = []
    for name, rows in table.groupby("model", sort=False):
        at = rows.set_index("frame")
        lines.append([name.replace("_", " ")] + [f"{at.loc[kind, column]:.2f}" for column in columns for kind in kinds])
    return markdown_table(head, lines)


def summary_text(table, steps):
    """compare() rows -> a plain-text table per metric: a row per model, a column per step in `steps`."""
    at = table[table.step.isin(steps)]
    order = list(dict.fromkeys(at.model))
    return "\n\n".join(f"{column.replace('_', ' ')}:\n"
                        + at.pivot(index="model", columns="step", values=column).loc[order].round(3).to_string()
                        for column in ("cosine_similarity", "relative_magnitude_error", "relative_magnitude_error_median"))


def results_markdown(table, steps, test_mse):
    """The README's results table: for each model, cosine similarity and mean relative magnitude error at
    `steps`, each with its 95% bootstrap interval over the scenes, and one-step test MSE {model: mse}
    where given."""
    head = ["model"] + [f"cos@{s} [95%]" for s in steps] + [f"rel.err@{s} [95%]" for s in steps]
    lines = []
    for name, rows in table.groupby("model", sort=False):
        at = rows.set_index("step").loc[list(steps)]
        cells = [name.replace("_", " ")]
        for metric in ("cosine_similarity", "relative_magnitude_error"):
            cells += [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                      zip(at[metric], at[f"{metric}_low"], at[f"{metric}_high"])]
        lines.append(cells + [f"{test_mse[name]:.2e}" if name in test_mse else "–"])
    return markdown_table(head + ["1-step test MSE"], lines)


def recorded_rows(scenes, steps, meta):
    """physics_metrics rows of the recorded scenes [S, 2 + steps, N, 5] themselves, named "simulator
    (recorded)": their energy against that at t, how far the simulator lets balls overlap."""
    truth = scenes[:, 2:2 + steps]
    return metric_rows("simulator (recorded)", physics_metrics(truth, scenes[:, 1:2].expand_as(truth), meta))


def physics_markdown(table, steps, truth=None, reference="simulator_oracle"):
    """compare() rows (with physics_metrics) -> a Markdown table: per model, the kinetic-energy ratio
    predicted / true at `steps` (mean [5th, 95th percentile] over scenes), the share of all its rolled-out
    frames with balls overlapping and with a ball through a wall or block (deepest in px), and its paired
    difference in cosine similarity to the `reference` model at `steps` [95% interval]. `truth`: the same
    rows of the recorded scenes themselves (recorded_rows), shown first."""
    shown = "oracle" if reference == "simulator_oracle" else reference.replace("_", " ")
    head = (["model"] + [f"energy@{s} [5%, 95%]" for s in steps] + ["overlap > 1 px (deepest)", "through wall (deepest)"]
            + [f"cos@{s} − {shown} [95%]" for s in steps])
    frames = [truth] if truth is not None else []
    lines = []
    for name, rows in pd.concat([*frames, table]).groupby("model", sort=False):
        if rows.energy_ratio.isna().all():  # a row without physics, such as the chaos reference
            continue
        at = rows.set_index("step")
        cells = [name.replace("_", " ")]
        cells += [f"{at.energy_ratio[s]:.3f} [{at.energy_ratio_p5[s]:.2f}, {at.energy_ratio_p95[s]:.2f}]" for s in steps]
        cells += [f"{rows[f'{what}_share'].mean():.2%} ({rows[f'{what}_deepest_px'].max():.1f} px)"
                  for what in ("overlap", "through_wall")]
        column = f"cosine_similarity_vs_{reference}"
        if column in at and at[column].notna().all():
            cells += [f"{at[column][s]:+.3f} [{at[f'{column}_low'][s]:+.3f}, {at[f'{column}_high'][s]:+.3f}]"
                      for s in steps]
        else:
            cells += ["–"] * len(steps)
        lines.append(cells)
    return markdown_table(head, lines)


def markdown_table(head, rows):
    """A Markdown table from column names and rows of cell strings."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows]) + "\n"


def generalization_markdown(table, steps):
    """compare() rows (with physics_metrics and the oracle's paired differences) with a world column -> a
    Markdown table: per world and model, cosine similarity and relative magnitude error (mean / median) at
    `steps`; at the last step the kinetic-energy ratio and the paired difference in cosine similarity to the
    simulator oracle [95% interval]; and the share of rolled-out frames with balls overlapping."""
    last, column = steps[-1], "cosine_similarity_vs_simulator_oracle"
    head = (["world", "model"] + [f"cos@{s}" for s in steps] + [f"rel.err@{s} mean / median" for s in steps]
            + [f"energy@{last}", f"cos@{last} − oracle [95%]", "overlap > 1 px"])
    lines = []
    for (world, model), rows in table.groupby(["world", "model"], sort=False):
        at = rows.set_index("step").loc[list(steps)]
        cells = [world, model.replace("_", " ")] + [f"{c:.3f}" for c in at.cosine_similarity]
        cells += [f"{m:.3f} / {d:.3f}" for m, d in zip(at.relative_magnitude_error, at.relative_magnitude_error_median)]
        difference = (f"{at[column][last]:+.3f} [{at[f'{column}_low'][last]:+.3f}, {at[f'{column}_high'][last]:+.3f}]"
                      if model != "simulator_oracle" else "–")
        lines.append(cells + [f"{at.energy_ratio[last]:.3f}", difference, f"{rows.overlap_share.mean():.2%}"])
    return markdown_table(head, lines)
