"""Autoregressive rollouts and the metrics that compare them with the truth."""
import numpy as np
import pandas as pd
import torch

from .config import MASS, POS, VEL, World, is_ball
from .models import integrate, position_step
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
    window, out = frames, []
    for _ in range(steps):
        window = step(model, window)
        out.append(window[:, 1])
    return torch.stack(out, dim=1)


def step(model, window):
    """One rollout step: window [B, 2, N, 5] (t-1, t) -> [B, 2, N, 5] (t, predicted t+1)."""
    state = torch.cat([model(window, positions=True), window[:, 1, :, MASS:]], dim=-1)  # [B, N, 5]
    return torch.stack([window[:, 1], state], dim=1)


class VelocityRule:
    """A rule for the next velocity that rolls out as a velocity model does (see rollout)."""

    pos_step = None

    def __call__(self, frames, positions=False):
        vel = self.velocity(frames)  # [B, N, 2]
        return torch.cat([integrate(frames, vel, self.pos_step), vel], dim=-1) if positions else vel

    def accepts(self, num_objects):
        return True


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


def velocity_metrics(pred, truth):
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
    return metrics


def bootstrap_interval(sums, counts, draws=1000):
    """The 95% interval [2, T] of sums.sum(0) / counts.sum(), a mean over balls, with the scenes (rows of
    sums [S, T], counts [S]) resampled with replacement; seeded, so a table regenerates exactly."""
    generator, means = torch.Generator().manual_seed(0), []
    for _ in range(draws // 100):  # 100 resamples at a time: [100, S, T] stays small
        picked = torch.randint(len(sums), (100, len(sums)), generator=generator)
        means.append(sums[picked].sum(1) / counts[picked].sum(1, keepdim=True))
    return torch.quantile(torch.cat(means), torch.tensor([0.025, 0.975], dtype=sums.dtype), dim=0)


def compare(models, scenes, steps):
    """models {name: model}, scenes [S, 2 + steps, N, 5] -> DataFrame of per-step metrics."""
    start, truth = scenes[:, :2], scenes[:, 2:2 + steps]
    return pd.concat([metric_rows(name, velocity_metrics(rollout(model, start, steps), truth))
                      for name, model in models.items()], ignore_index=True)


def metric_rows(name, metrics):
    """velocity_metrics() of `name` as DataFrame rows, one per step."""
    return pd.DataFrame({"model": name, "step": range(1, len(metrics["cosine_similarity"]) + 1),
                         **{k: v.tolist() for k, v in metrics.items()}})


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
    name = f"simulator, noise {position_px:g} px, {velocity_px:g} px/frame"
    return metric_rows(name, velocity_metrics(torch.as_tensor(pred, dtype=scenes.dtype), scenes[:, 2:2 + steps]))


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


def markdown_table(head, rows):
    """A Markdown table from column names and rows of cell strings."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows]) + "\n"


def generalization_markdown(table, steps):
    """compare() rows with a world column -> a Markdown table: per world and model, cosine similarity
    and relative magnitude error (mean / median) at `steps`."""
    head = ["world", "model"] + [f"cos@{s}" for s in steps] + [f"rel.err@{s} mean / median" for s in steps]
    lines = []
    for (world, model), rows in table.groupby(["world", "model"], sort=False):
        at = rows.set_index("step").loc[list(steps)]
        cells = [world, model.replace("_", " ")] + [f"{c:.3f}" for c in at.cosine_similarity]
        lines.append(cells + [f"{m:.3f} / {d:.3f}" for m, d in zip(at.relative_magnitude_error,
                                                                    at.relative_magnitude_error_median)])
    return markdown_table(head, lines)
