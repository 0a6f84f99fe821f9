"""The Neural Physics Engine: a pairwise encoder summed over each ball's neighbourhood, and a decoder;
the paper's two baselines, NP (no pairs) and an LSTM; and the loss they all train on.

All models take `frames` [B, 2, N, 5] (normalized states at t-1 and t) and return the normalized
velocity at t+1, [B, N, 2], or with positions=True the positions and velocities at t+1, [B, N, 4]. The
network itself predicts the change of velocity divided by `dv_scale` (the standard deviation of that
change in the training data), so its outputs are O(1); forward() adds it back to the velocity at t, and
keeps static blocks and padding still. A velocity model (the paper's) places each ball at
x(t) + v(t+1) dt, which is wrong within a frame where it collides; a next-state model (dx_scale > 0)
also predicts where that rule goes wrong, in units of dx_scale, and places the ball there. The
NPEs work on all [B, N, N] pairs at once with a neighbourhood mask (no loops over balls, any N, and
permuting the objects permutes the outputs), and encode only the pairs the mask keeps unless they run
on a GPU (neighbourhood_sum).

A model class is all a new kind needs: its `kind` registers it in MODELS, its constructor's defaults
are its sizes, and `flags` names the ones a training flag of the same name sets. The arguments that
follow from the data (neighbourhood, dv_scale, pos_step) are filled in by data_config.
"""
import inspect

import torch
from torch import nn

from .cli import NPEError, fraction, model_size, switch
from .config import MASS, NEIGHBOURHOOD_RADII, PAD_MASS, POS, STATE_DIM, VEL, is_ball

FEATURES = 2 * STATE_DIM  # one ball over the two input frames
MODELS = {}  # kind -> model class, filled in by each class that names a kind


class Dynamics(nn.Module):
    """What every model shares: the output scaling, the next positions, and its registration by kind.

    dv_scale: std of the velocity change per frame, in normalized velocity units.
    pos_step: normalized position change per frame for a normalized velocity of 1 (vel_scale * dt / pos_scale).
    dx_scale: 0 for a velocity model; for a next-state model, the std of the position residual
        x(t+1) - x(t) - pos_step v(t+1) in the training data (normalized position units), which the
        network predicts in units of it.
    conserve_energy: 1 to rescale the predicted velocities of each scene so that the balls' total kinetic
        energy stays what it was at t: conservation by construction, right for the simulated worlds
        (elastic balls, static walls and blocks), wrong for a world that loses energy.
    """

    kind = None  # the name a checkpoint and --model use
    run_name = None  # the training scripts' default --name
    flags = {}  # constructor arguments set by a training flag of the same name: {name: (flag type, help)}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            MODELS[cls.kind] = cls

    def __init__(self, dv_scale: float, pos_step: float, dx_scale: float = 0.0, conserve_energy: int = 0):
        super().__init__()
        self.dv_scale, self.pos_step, self.dx_scale = dv_scale, pos_step, dx_scale
        self.conserve_energy = conserve_energy
        self.outputs = 4 if dx_scale else 2  # what delta() returns per ball

    def refuses(self, scenes):
        """Why this model cannot run scenes [S, F, N, 5], or None when it can."""
        return None

    def forward(self, frames, positions=False):
        """frames [B, 2, N, 5] -> normalized velocity at t+1 [B, N, 2]; 0 for blocks and padding. With
        positions=True: [B, N, 4], the positions and velocities at t+1 (blocks and padding stay put)."""
        moving = is_ball(frames[:, 1])[..., None]  # [B, N, 1]
        out = self.delta(frames)  # [B, N, outputs]
        vel = (frames[:, 1, :, VEL] + self.dv_scale * out[..., :2]) * moving
        if self.conserve_energy:
            vel = keep_energy(frames, vel)
        if not positions:
            return vel
        residual = self.dx_scale * out[..., 2:] * moving if self.dx_scale else 0.0
        return torch.cat([integrate(frames, vel, self.pos_step) + residual, vel], dim=-1)

    def delta(self, frames):
        """frames [B, 2, N, 5] -> [B, N, outputs]: the velocity change in units of dv_scale and, for a
        next-state model, the position residual in units of dx_scale."""
        raise NotImplementedError


def kinetic_energy(mass, vel):
    """mass [..., N], vel [..., N, 2] (normalized) -> [...]: sum of m |v|^2 over the balls (blocks have mass
    0, padding a negative one that counts as 0)."""
    return (mass.clamp_min(0) * vel.pow(2).sum(-1)).sum(-1)


def keep_energy(frames, vel):
    """vel [B, N, 2] at t+1 scaled per scene so that sum(m |v|^2) over the balls is that of frames [B, 2, N, 5]
    at t. A scene whose prediction has (next to) no energy is left as it is rather than blown up."""
    mass = frames[:, 1, :, MASS]  # [B, N]
    before, after = kinetic_energy(mass, frames[:, 1, :, VEL]), kinetic_energy(mass, vel)  # [B]
    scale = torch.where(after > 1e-12, (before / after.clamp_min(1e-12)).sqrt(), torch.ones_like(after))
    return vel * scale[:, None, None]


def integrate(frames, vel, pos_step):
    """The paper's position rule: frames [B, 2, N, 5], vel [B, N, 2] at t+1 -> x(t) + v(t+1) dt [B, N, 2]."""
    return frames[:, 1, :, POS] + vel * pos_step


class PairwiseNPE(Dynamics):
    """Shared input features, neighbourhood mask and pair sum of the two NPEs.

    neighbourhood: mask radius in normalized position units (3.5 ball radii).
    relative_velocity: 1 to describe a context object's velocity relative to the focus, as its position is.
    """

    dense_pairs = None  # None: encode every pair on a GPU, only the kept ones elsewhere; True / False force it
    flags = {"relative_velocity": (switch, "1: a context object's velocity is read relative to the focus's"),
             "conserve_energy": (switch, "1: each scene's predicted velocities are rescaled to keep the balls' "
                                         "kinetic energy at t (the simulated worlds are elastic)")}

    def __init__(self, neighbourhood: float, dv_scale: float, pos_step: float, dx_scale: float = 0.0,
                 relative_velocity: int = 0, conserve_energy: int = 0):
        super().__init__(dv_scale, pos_step, dx_scale, conserve_energy)
        self.neighbourhood, self.relative_velocity = neighbourhood, relative_velocity

    def features(self, frames):
        """frames [B, 2, N, 5] -> focus [B, N, F], context [B, N, N, F], mask [B, N, N] (focus i, context j);
        F = 10 (two frames of a state) but in the paper-exact model.

        The focus is described absolutely (the walls are fixed in the box frame); a context object by
        its position relative to the focus (and with relative_velocity its velocity too), its velocity
        and its mass (0 for a block), so a pair looks the same anywhere. The mask keeps the other
        objects within the neighbourhood, padding never.
        """
        b, _, n, _ = frames.shape
        states = self.describe(frames).permute(0, 2, 1, 3)  # [B, N, 2, F / 2]
        focus = states.reshape(b, n, -1)
        relative = torch.zeros(states.shape[-1], dtype=states.dtype, device=states.device)
        relative[:VEL.stop if self.relative_velocity else POS.stop] = 1  # the features read as x_j - x_i
        # One broadcast subtraction, x_j - relative * x_i; 0 * x_i leaves x_j exactly as it was.
        context = (states[:, None] - states[:, :, None] * relative).reshape(b, n, n, -1)  # [B, i, j, F]
        centres = self.mask_centres(frames)  # [B, N, 2]
        dist = (centres[:, None, :] - centres[:, :, None]).norm(dim=-1)  # [B, i, j]
        eye = torch.eye(n, dtype=torch.bool, device=frames.device)
        present = frames[:, 1, None, :, MASS] != PAD_MASS  # [B, 1, N]
        mask = (dist < self.neighbourhood) & ~eye & present
        return focus, context, mask

    def describe(self, frames):
        """frames [B, 2, N, 5] -> what the network reads of each object in each frame [B, 2, N, F / 2]."""
        return frames

    def mask_centres(self, frames):
        """frames [B, 2, N, 5] -> [B, N, 2]: where the neighbourhood is measured from, the positions at t."""
        return frames[:, 1, :, POS]

    def neighbourhood_sum(self, encode, f, context, mask):
        """Each focus object's pair encodings summed over its neighbourhood: encode(f [..., D], context
        [..., 10]) -> [..., E] is applied to pairs (focus i, context j), f [B, N, D] describes the focus
        objects, context [B, N, N, 10] and mask [B, N, N] come from features(). Returns [B, N, E].

        On a GPU every pair is encoded and the mask zeroes the others out: static shapes, no host sync
        (so CUDA graphs can replay it). Elsewhere only the pairs inside the mask are gathered and encoded,
        about 16% of them with 4 balls, which made a training step 1.3x to 1.5x (classic, batch 50) and 3x
        (modern, batch 2048) faster on a CPU (npe.bench); both give the same sums, up to float rounding.
        """
        b, n, _ = f.shape
        dense = f.is_cuda if self.dense_pairs is None else self.dense_pairs
        if dense:
            return (encode(f[:, :, None].expand(b, n, n, -1), context) * mask[..., None]).sum(dim=2)
        batch, i, j = mask.nonzero(as_tuple=True)  # [P] each: the kept pairs
        focus = batch * n + i  # [P]: row of each pair's focus object in [B * N]
        encoded = encode(f.reshape(b * n, -1)[focus], context[batch, i, j])  # [P, E]
        return encoded.new_zeros(b * n, encoded.shape[-1]).index_add_(0, focus, encoded).view(b, n, -1)


def mlp(sizes, final_activation):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ClassicNPE(PairwiseNPE):
    """The paper's network: a 25-unit ReLU layer per object, a 5 x 50 ReLU pairwise encoder, the
    encodings of the neighbourhood summed, and a 5-layer, 50-unit decoder that also sees the focus, as
    its 25-unit encoding (PaperNPE: as its state).

    features: input width per object over the two frames (PaperNPE's one-hot masses widen it).
    """

    kind, run_name = "classic", "npe_classic"
    flags = {**PairwiseNPE.flags, "hidden": (model_size, "width of the pairwise encoder and decoder layers")}
    raw_focus = False  # whether the decoder sees the focus object's state rather than its encoding

    def __init__(self, neighbourhood, dv_scale, pos_step, dx_scale=0.0, object_dim=25, hidden=50, enc_layers=5,
                 dec_layers=5, features=FEATURES, relative_velocity=0, conserve_energy=0):
        super().__init__(neighbourhood, dv_scale, pos_step, dx_scale, relative_velocity, conserve_energy)
        self.focus_in = mlp([features, object_dim], True)
        self.context_in = mlp([features, object_dim], True)
        self.encoder = mlp([2 * object_dim] + [hidden] * enc_layers, True)
        decoder_in = hidden + (features if self.raw_focus else object_dim)
        self.decoder = mlp([decoder_in] + [hidden] * (dec_layers - 1) + [self.outputs], False)

    def delta(self, frames):
        focus, context, mask = self.features(frames)
        f = self.focus_in(focus)  # [B, N, 25]

        def encode(f_pair, context_pair):  # [..., 25], [..., F] -> [..., 50]
            return self.encoder(torch.cat([f_pair, self.context_in(context_pair)], dim=-1))

        encoded = self.neighbourhood_sum(encode, f, context, mask)  # [B, N, 50]
        return self.decoder(torch.cat([encoded, focus if self.raw_focus else f], dim=-1))  # [B, N, outputs]


class PaperNPE(ClassicNPE):
    """The classic NPE exactly as the paper and its authors' code have it, where ours deviates: the
    decoder sees the focus object's raw state; the neighbourhood is measured between positions advanced
    one frame at the current velocities, x(t) + v(t) dt; and mass is one-hot over the world's `masses`
    (a block's mass 0 and padding match none)."""

    kind, run_name = "paper", "npe_paper"
    raw_focus = True

    def __init__(self, neighbourhood, dv_scale, pos_step, masses, dx_scale=0.0, object_dim=25, hidden=50,
                 enc_layers=5, dec_layers=5, relative_velocity=0, conserve_energy=0):
        super().__init__(neighbourhood, dv_scale, pos_step, dx_scale, object_dim, hidden, enc_layers, dec_layers,
                         2 * (MASS + len(masses)), relative_velocity, conserve_energy)
        self.masses = list(masses)

    def describe(self, frames):
        masses = torch.tensor(self.masses, dtype=frames.dtype, device=frames.device)
        one_hot = (frames[..., MASS, None] == masses).to(frames.dtype)  # [B, 2, N, M]
        return torch.cat([frames[..., :MASS], one_hot], dim=-1)

    def mask_centres(self, frames):
        return frames[:, 1, :, POS] + frames[:, 1, :, VEL] * self.pos_step

    def refuses(self, scenes):
        masses = scenes[..., MASS].unique()
        known = torch.tensor(self.masses, dtype=masses.dtype)  # compared as describe() compares them
        if unknown := masses[(masses > 0) & ~torch.isin(masses, known)].tolist():
            return (f"its one-hot mass input knows only the masses {', '.join(f'{m:g}' for m in self.masses)}, "
                    f"not {', '.join(f'{m:g}' for m in unknown)}")
        return None


class ResidualBlock(nn.Module):
    """Pre-norm MLP block: x + W2 dropout(GELU(W1 LayerNorm(x)))."""

    def __init__(self, dim, expansion, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * expansion), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(dim * expansion, dim),
        )

    def forward(self, x):
        return x + self.net(x)


class ModernNPE(PairwiseNPE):
    """The same encode, sum, decode structure from pre-norm residual MLP blocks."""

    kind, run_name = "modern", "npe_modern"
    flags = {**PairwiseNPE.flags, "msg_dim": (model_size, "width of messages and residual stream"),
             "enc_blocks": (model_size, "residual blocks in the pairwise encoder"),
             "dec_blocks": (model_size, "residual blocks in the decoder"),
             "expansion": (model_size, "MLP hidden width = msg_dim x expansion"),
             "dropout": (fraction, "dropout inside residual blocks")}

    def __init__(self, neighbourhood, dv_scale, pos_step, dx_scale=0.0, msg_dim=96, enc_blocks=3, dec_blocks=3,
                 expansion=2, dropout=0.0, relative_velocity=0, conserve_energy=0):
        super().__init__(neighbourhood, dv_scale, pos_step, dx_scale, relative_velocity, conserve_energy)
        self.focus_in = nn.Linear(FEATURES, msg_dim)
        self.context_in = nn.Linear(FEATURES, msg_dim)
        self.encoder = nn.Sequential(*[ResidualBlock(msg_dim, expansion, dropout) for _ in range(enc_blocks)],
                                     nn.LayerNorm(msg_dim))
        self.merge = nn.Linear(2 * msg_dim, msg_dim)
        self.decoder = nn.Sequential(*[ResidualBlock(msg_dim, expansion, dropout) for _ in range(dec_blocks)],
                                     nn.LayerNorm(msg_dim), nn.Linear(msg_dim, self.outputs))

    def delta(self, frames):
        focus, context, mask = self.features(frames)
        f = self.focus_in(focus)  # [B, N, D]

        def encode(f_pair, context_pair):  # [..., D], [..., 10] -> [..., D]
            return self.encoder(f_pair + self.context_in(context_pair))  # a Linear of the concatenated pair

        encoded = self.neighbourhood_sum(encode, f, context, mask)  # [B, N, D]
        return self.decoder(self.merge(torch.cat([encoded, f], dim=-1)))  # [B, N, outputs]


class NoPairwise(Dynamics):
    """The paper's NP baseline: the classic NPE without its pairwise encoder, so each ball's next
    velocity follows from its own two states alone (walls, but no collisions, can be learned)."""

    kind, run_name = "np", "np_baseline"

    def __init__(self, dv_scale, pos_step, dx_scale=0.0, object_dim=25, hidden=50, dec_layers=5):
        super().__init__(dv_scale, pos_step, dx_scale)
        self.focus_in = mlp([FEATURES, object_dim], True)
        self.decoder = mlp([object_dim] + [hidden] * (dec_layers - 1) + [self.outputs], False)

    def delta(self, frames):
        b, _, n, _ = frames.shape
        focus = frames.permute(0, 2, 1, 3).reshape(b, n, FEATURES)  # [B, N, 10]
        return self.decoder(self.focus_in(focus))  # [B, N, outputs]


class LSTMBaseline(Dynamics):
    """The paper's LSTM baseline: the states of all objects concatenated in their slot order, read as a
    sequence of the two frames; the last output gives every object's velocity change at once. Scenes
    with fewer than `slots` objects are padded, so it can run on up to `slots` objects, but it sees
    neither pairs nor permutation symmetry."""

    kind, run_name = "lstm", "lstm_baseline"
    flags = {"slots": (model_size, "objects the LSTM takes (scenes are padded to this many)")}

    def __init__(self, dv_scale, pos_step, dx_scale=0.0, slots=10, hidden=100, layers=2):
        super().__init__(dv_scale, pos_step, dx_scale)
        self.slots = slots
        self.lstm = nn.LSTM(slots * STATE_DIM, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, slots * self.outputs)

    def refuses(self, scenes):
        if scenes.shape[2] > self.slots:
            return f"it cannot take scenes of {scenes.shape[2]} objects (its --slots is {self.slots})"
        return None

    def delta(self, frames):
        b, t, n, _ = frames.shape
        if n > self.slots:
            raise NPEError(f"this LSTM takes at most {self.slots} objects (its --slots), got scenes of {n}")
        pad = frames.new_zeros(b, t, self.slots - n, STATE_DIM)
        pad[..., MASS] = PAD_MASS
        out, _ = self.lstm(torch.cat([frames, pad], dim=2).reshape(b, t, self.slots * STATE_DIM))  # [B, 2, hidden]
        return self.head(out[:, -1]).view(b, self.slots, self.outputs)[:, :n]  # [B, N, outputs]


def size_defaults(kind):
    """{flag: default} of the sizes a training flag sets for model `kind`: its constructor's defaults."""
    parameters = inspect.signature(MODELS[kind]).parameters
    return {name: parameters[name].default for name in MODELS[kind].flags}


def position_step(meta):
    """Normalized position change per frame for a normalized velocity of 1 (vel_scale * dt / pos_scale)."""
    return meta["state_scale"][2] * meta["dt"] / meta["state_scale"][0]


def data_config(kind, meta, dv_scale, dx_scale=0.0):
    """The constructor arguments of model `kind` that follow from the data: the neighbourhood radius, the
    integration step and the masses from the dataset's metadata, dv_scale (and dx_scale for a next-state
    model, left out for a velocity model) from its train split."""
    derived = {"neighbourhood": NEIGHBOURHOOD_RADII * meta["world"]["radius"] / meta["state_scale"][0],
               "dv_scale": dv_scale, "pos_step": position_step(meta), "dx_scale": dx_scale,
               "masses": list(meta["world"]["masses"])}
    parameters = inspect.signature(MODELS[kind]).parameters
    return {name: value for name, value in derived.items() if name in parameters and (value or name != "dx_scale")}


def build_model(kind, config):
    return MODELS[kind](**config)


def step_errors(model, frames, target, dv_scale=1.0, dx_scale=0.0):
    """Each ball's squared error of the predicted velocity at t+1 (mean of x and y) in units of dv_scale,
    plus, where dx_scale > 0 (a next-state model's training and validation), that of its predicted
    position in units of dx_scale.

    frames [B, 2, N, 5], target [B, N, 5] (the state at t+1) -> errors [B, N] (0 for blocks and padding),
    balls [B, N]. The one definition of the loss: training, validation, the test MSE and mass inference
    reduce it.
    """
    if not dx_scale:
        balls = is_ball(frames[:, 1])
        return (model(frames) - target[..., VEL]).pow(2).mean(-1) * balls / dv_scale**2, balls
    return prediction_errors(model(frames, positions=True), frames, target, dv_scale, dx_scale)


def prediction_errors(pred, frames, target, dv_scale, dx_scale):
    """step_errors of a next-state prediction pred [B, N, 4] from frames [B, 2, N, 5]."""
    balls = is_ball(frames[:, 1])
    errors = (pred[..., 2:] - target[..., VEL]).pow(2).mean(-1) / dv_scale**2
    if dx_scale:
        errors = errors + (pred[..., :2] - target[..., POS]).pow(2).mean(-1) / dx_scale**2
    return errors * balls, balls


def loss(model, frames, target, dv_scale, dx_scale=0.0):
    """The training loss: step_errors averaged over the balls of the batch. Predicting "no change"
    scores about 1 per term when dv_scale (dx_scale) is the data's std of that change."""
    errors, balls = step_errors(model, frames, target, dv_scale, dx_scale)
    return errors.sum() / balls.sum()


@torch.no_grad()
def one_step_loss(model, windows, dv_scale=1.0, dx_scale=0.0, chunk=16384):
    """The loss over all windows [W, 3, N, 5] (every ball weighs the same), computed in chunks; by default
    the velocity MSE in normalized units, the same measure for every model."""
    total, balls = 0.0, 0
    for part in windows.split(chunk):
        errors, moving = step_errors(model, part[:, :2], part[:, 2], dv_scale, dx_scale)
        total, balls = total + errors.sum().item(), balls + moving.sum().item()
    return total / balls
