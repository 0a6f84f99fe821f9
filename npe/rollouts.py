"""Autoregressive rollouts and the metrics that compare them with the truth."""
import pandas as pd
import torch

from .config import MASS, POS, VEL, is_ball


@torch.no_grad()
def rollout(model, frames, steps):
    """frames [B, 2, N, 5] (normalized, t-1 and t) -> predicted states [B, steps, N, 5].

    Velocities come from the model; positions are integrated as x(t+1) = x(t) + v(t+1) dt, which is
    the simulator's own step in free flight but not within a frame where a collision happens (its
    sub-steps move the ball before and after the bounce); mass is carried over, and blocks and padding,
    whose velocity the model keeps at 0, stay where they are. `model` may also be a plain function of
    frames, such as ConstantVelocity.
    """
    pos_step = model.pos_step
    window, out = frames, []
    for _ in range(steps):
        vel = model(window)  # [B, N, 2]
        last = window[:, 1]
        pos = last[..., POS] + vel * pos_step
        state = torch.cat([pos, vel, last[..., MASS:]], dim=-1)  # [B, N, 5]
        out.append(state)
        window = torch.stack([last, state], dim=1)
    return torch.stack(out, dim=1)


class ConstantVelocity:
    """The baseline: every ball keeps its last velocity."""

    def __init__(self, pos_step):
        self.pos_step = pos_step

    def __call__(self, frames):
        return frames[:, 1, :, VEL]

    def accepts(self, num_objects):
        return True


def velocity_metrics(pred, truth):
    """pred, truth [B, T, N, 5] -> per-step cosine similarity, relative magnitude error (mean, median).

    All are taken per ball and step, blocks and padding left out; relative magnitude error is
    | |v| - |v_pred| | / |v|, heavy-tailed when a true ball nearly stops, hence the median beside the
    mean. Each is [T].
    """
    v, p = truth[..., VEL], pred[..., VEL]
    cos = torch.nn.functional.cosine_similarity(p, v, dim=-1, eps=1e-12)  # [B, T, N]
    speed = v.norm(dim=-1)
    rel = (speed - p.norm(dim=-1)).abs() / speed.clamp_min(1e-12)
    moving = is_ball(truth[:, 0])  # [B, N]
    per_step = lambda x: x.transpose(0, 1)[:, moving]  # [T, balls]
    return per_step(cos).mean(1), per_step(rel).mean(1), per_step(rel).median(1).values


def compare(models, scenes, steps):
    """models {name: model}, scenes [S, 2 + steps, N, 5] -> DataFrame of per-step metrics."""
    start, truth = scenes[:, :2], scenes[:, 2:2 + steps]
    rows = []
    for name, model in models.items():
        cos, rel, rel_median = velocity_metrics(rollout(model, start, steps), truth)
        for t in range(steps):
            rows.append({"model": name, "step": t + 1, "cosine_similarity": cos[t].item(),
                         "relative_magnitude_error": rel[t].item(),
                         "relative_magnitude_error_median": rel_median[t].item()})
    return pd.DataFrame(rows)


def summary_text(table, steps):
    """compare() rows -> a plain-text table per metric: a row per model, a column per step in `steps`."""
    at = table[table.step.isin(steps)]
    order = list(dict.fromkeys(at.model))
    return "\n\n".join(f"{column.replace('_', ' ')}:\n"
                        + at.pivot(index="model", columns="step", values=column).loc[order].round(3).to_string()
                        for column in ("cosine_similarity", "relative_magnitude_error", "relative_magnitude_error_median"))


def results_markdown(table, steps, test_mse):
    """The README's results table: metrics at `steps` for each model, plus one-step test MSE {model: mse}."""
    head = ["model"] + [f"cos@{s}" for s in steps] + [f"rel.err@{s} mean / median" for s in steps]
    lines = []
    for name, rows in table.groupby("model", sort=False):
        at = rows.set_index("step").loc[list(steps)]
        cells = [name.replace("_", " ")] + [f"{c:.3f}" for c in at.cosine_similarity]
        cells += [f"{m:.3f} / {d:.3f}" for m, d in zip(at.relative_magnitude_error,
                                                       at.relative_magnitude_error_median)]
        lines.append(cells + [f"{test_mse[name]:.2e}"])
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
