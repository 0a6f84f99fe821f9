"""Videos of rollouts: panels side by side, one per trajectory, the box and the balls drawn to scale; as
mp4 (H.264, through ffmpeg) or as an animated GIF (through pillow), which web pages such as GitHub's
READMEs show inline."""
import math

import imageio.v2 as imageio
import imageio_ffmpeg
import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # labels come from file names: a "$" is a dollar sign
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from matplotlib.collections import EllipseCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .config import MASS, POS  # noqa: E402
from .files import atomic_path, first_line  # noqa: E402

DPI = 100
PANEL_PX = 480  # width of one panel
PAD_PX, TITLE_PX, FOOTER_PX = 10, 56, 34  # room for two-line panel titles
START_FRAMES = 2  # the true frames t-1, t that every rollout starts from


def _frame_label(frame, total):
    if frame < START_FRAMES:
        return f"frame {frame + 1} / {total}   (true start frame, shared)"
    return f"frame {frame + 1} / {total}   (rollout step {frame + 1 - START_FRAMES})"


def _figure(titles, world, masses, blocks):
    """The static figure: one axes per panel with its title ({text: colour}), the box and the blocks (centres [K, 2] px),
    sized so that the pixel dimensions are multiples of 16 (H.264 macroblocks; imageio would otherwise
    rescale, with a warning). Returns the figure, per panel its ball collection and the balls' mass
    labels (none when all balls weigh the same), and the frame counter; all but the figure animated."""
    w, h, r, side = world["width"], world["height"], world["radius"], world.get("block_size", 0)
    margin = r / 2  # a little room around the box, so a ball a model pushes through a wall stays visible
    box_w = PANEL_PX - 2 * PAD_PX
    box_h = round(box_w * (h + 2 * margin) / (w + 2 * margin))
    fig_w = 16 * math.ceil(PANEL_PX * len(titles) / 16)
    fig_h = 16 * math.ceil((TITLE_PX + box_h + FOOTER_PX) / 16)
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    num_balls = len(masses)
    colours = [plt.get_cmap("tab10").colors[i % 10] for i in range(num_balls)]
    balls, labels = [], []
    for k, title in enumerate(titles):
        ax = fig.add_axes([(k * PANEL_PX + PAD_PX) / fig_w, (fig_h - TITLE_PX - box_h) / fig_h,
                           box_w / fig_w, box_h / fig_h])
        ax.set(xlim=(-margin, w + margin), ylim=(-margin, h + margin), aspect="equal")
        ax.set_axis_off()
        ax.set_title(title, fontsize=14, color=titles[title])
        ax.add_patch(Rectangle((0, 0), w, h, fill=False, linewidth=2, edgecolor="black"))
        for x, y in blocks:
            ax.add_patch(Rectangle((x - side / 2, y - side / 2), side, side, facecolor="dimgray", edgecolor="none"))
        # Sized in data units (units="xy"), so the balls are to scale; one set_offsets moves them all.
        balls.append(ax.add_collection(EllipseCollection(
            2 * r, 2 * r, 0, units="xy", offsets=np.zeros((num_balls, 2)), offset_transform=ax.transData,
            facecolors=colours, animated=True)))
        labels.append([ax.text(0, 0, f"{m:g}", ha="center", va="center", fontsize=12, fontweight="bold",
                               color="white", animated=True) for m in masses] if len(set(masses)) > 1 else [])
    counter = fig.text(0.5, FOOTER_PX / 2 / fig_h, "", ha="center", va="center", fontsize=12, animated=True)
    return fig, balls, labels, counter


def render_rollouts(panels, meta, path, fps=30, colours=None):
    """panels {title: normalized states [T, N, 5]} -> a video at `path`, the panels side by side in order:
    an mp4 (H.264 in yuv420p, which browsers and ordinary players open), or a looping GIF where `path`
    ends in .gif. colours: {title: colour of the title} (default black).

    The first START_FRAMES frames are labelled as the true start that all panels share. Ball i has the
    same colour in every panel and, when the balls' masses differ, its mass written on it; blocks are
    drawn grey, padding not at all. Written atomically, and read back before it replaces `path`.
    """
    states = list(panels.values())
    if len({tuple(s.shape[:2]) for s in states}) != 1:
        raise ValueError(f"panels differ in frames or balls: {[tuple(s.shape) for s in states]}")
    scale = torch.tensor(meta["state_scale"][POS], dtype=torch.float32)
    mass = states[0][0, :, MASS].cpu()  # [N]: > 0 ball, 0 block, PAD_MASS padding
    positions = [(s[:, mass > 0, POS].float().cpu() * scale).numpy() for s in states]  # each [T, balls, 2], px
    blocks = (states[0][0, mass == 0, POS].float().cpu() * scale).numpy()  # [K, 2] px
    total = len(positions[0])
    titles = {title: (colours or {}).get(title, "black") for title in panels}
    fig, balls, labels, counter = _figure(titles, meta["world"], mass[mass > 0].tolist(), blocks)
    try:
        # Blitting: the titles and boxes are drawn once; each frame restores that background and
        # draws only the balls and the counter, instead of laying out the whole figure again.
        fig.canvas.draw()
        background = fig.canvas.copy_from_bbox(fig.bbox)
        with atomic_path(path) as tmp:
            with _writer(tmp, fps) as writer:
                for t in range(total):
                    fig.canvas.restore_region(background)
                    for panel, texts, pos in zip(balls, labels, positions):
                        panel.set_offsets(pos[t])
                        fig.draw_artist(panel)
                        for text, xy in zip(texts, pos[t]):
                            text.set_position(xy)
                            fig.draw_artist(text)
                    counter.set_text(_frame_label(t, total))
                    fig.draw_artist(counter)
                    writer.append_data(np.asarray(fig.canvas.buffer_rgba())[..., :3])  # RGBA -> RGB
            check_video(tmp, total)
    finally:
        plt.close(fig)


def _writer(path, fps):
    if path.suffix == ".gif":  # pillow; GIF frame times are whole hundredths of a second
        return imageio.get_writer(path, mode="I", duration=1000 / fps, loop=0)
    return imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                              macro_block_size=16, ffmpeg_log_level="error")


def check_video(path, frames):
    """Raise OSError unless the video at `path` decodes to `frames` frames.

    imageio does not raise when ffmpeg fails: on a full disk ffmpeg printed "No space left on device",
    exited, and the cut-off file would have replaced a good video. So the file is read back before that.
    """
    try:
        if path.suffix == ".gif":
            with Image.open(path) as gif:
                found = gif.n_frames
        else:
            found = imageio_ffmpeg.count_frames_and_secs(path)[0]
    except (RuntimeError, OSError) as err:
        raise OSError(f"cannot read back the video just written ({first_line(err)})") from None
    if found != frames:
        raise OSError(f"ffmpeg wrote {found} of {frames} frames (a full disk?)")
