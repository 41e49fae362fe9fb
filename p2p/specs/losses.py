"""The loss terms of a training step: one `LossSpec` per term, registered in `LOSSES`.

A term is one entry of the step's loss dict and of `metrics.jsonl` (`name`), part of the
generator's or the discriminator's loss (`network`), weighted by a config key (`weight_key`,
e.g. "loss.lambda_l1", whose default and help line the config schema takes from here: a new
term needs no schema edit), and computed by `forward` ("module:attr", `f(view, weight)` with
the step's `p2p.train.step.StepView`: the weighted loss, a float32 scalar tensor). The step adds
up the terms that are on, in registration order (the official sums' order); the finiteness
check at log steps reads every term registered here; `p2p.train.flops` adds what `flops`
("module:attr", `f(counts)` with `p2p.train.flops.FlopCounts`) says a term costs.

Adding a term: a module holding its forward, one `LOSSES.register(...)` line below, and its
hand computation in tests/test_loss_specs.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p.specs import Table

NETWORKS = ("G", "D")


@dataclass(frozen=True)
class LossSpec:
    name: str  # its key in the step's loss dict and in metrics.jsonl, e.g. "G_L1"
    network: str  # "G" or "D": the network whose loss it is part of
    forward: str  # "module:attr": f(view, weight) -> the weighted loss (float32 scalar tensor)
    weight_key: str = ""  # "loss.<field>"; "" = unweighted (the adversarial terms)
    default: float = 0.0  # the weight's default; 0 = off unless `always`
    help: str = ""  # the weight key's help line (`p2p config --keys`)
    always: bool = False  # computed whatever its weight (the adversarial terms; L1, as the official step)
    gan_modes: tuple[str, ...] = ()  # only under these loss.gan_mode values (empty: every mode)
    share: float = 1.0  # the factor it enters its network's total with (D_real, D_fake: halved, as the paper)
    d_features: bool = False  # reads the discriminator's activations in the G update, not only its logits
    module: str = ""  # "module:attr": f(loss config, task, device) -> the module it needs (built once), or ""
    flops: str = ""  # "module:attr": f(counts) -> FLOPs per image it adds; "" = elementwise, not counted
    checked: bool = True  # a non-finite value stops training at the next log step (train.on_nonfinite=stop)

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"loss term {self.name}: network must be one of {NETWORKS}, not {self.network!r}")
        if self.weight_key and not self.weight_key.startswith("loss."):
            raise ValueError(f"loss term {self.name}: its weight key is a loss.* key, not {self.weight_key!r}")

    @property
    def field(self) -> str:
        """The LossConfig field of its weight ("" when unweighted)."""
        return self.weight_key.partition(".")[2]

    def weight(self, loss) -> float:
        """Its weight in `loss` (a LossConfig); 1 when unweighted."""
        return getattr(loss, self.field) if self.weight_key else 1.0

    def on(self, loss) -> bool:
        """Whether a step with `loss` computes this term (a config decision, never a tensor's)."""
        if self.gan_modes and loss.gan_mode not in self.gan_modes:
            return False
        return self.always or self.weight(loss) > 0


LOSSES: Table[LossSpec] = Table("loss term")

_T = "p2p.losses.terms"
# the order is the order of the sums (and of the loss.* weight keys in the config)
LOSSES.register(LossSpec("G_GAN", "G", f"{_T}:generator_gan", always=True))
LOSSES.register(LossSpec("G_L1", "G", f"{_T}:l1", "loss.lambda_l1", 100.0, "weight of the L1 loss", always=True))
LOSSES.register(LossSpec("D_real", "D", f"{_T}:discriminator_real", always=True, share=0.5))
LOSSES.register(LossSpec("D_fake", "D", f"{_T}:discriminator_fake", always=True, share=0.5))
LOSSES.register(LossSpec("D_gp", "D", f"{_T}:gradient_penalty", "loss.lambda_gp", 10.0,
                         "weight of the gradient penalty (wgangp only)", always=True, gan_modes=("wgangp",)))
LOSSES.register(LossSpec("G_feat", "G", f"{_T}:feature_matching", "loss.lambda_feat", 0.0,
                         "discriminator feature matching weight (pix2pixHD: 10): L1 between D's activations on real "
                         "and fake pairs, 4/layers per layer, 1/num_d per scale", d_features=True,
                         flops=f"{_T}:feature_matching_flops"))
LOSSES.register(LossSpec("G_VGG", "G", f"{_T}:perceptual", "loss.lambda_vgg", 0.0,
                         "VGG19 perceptual loss weight (pix2pixHD: 10): L1 of relu1_1..relu5_1 features weighted "
                         "1/32..1; needs loss.vgg_weights", module=f"{_T}:perceptual_module",
                         flops=f"{_T}:perceptual_flops"))
LOSSES.register(LossSpec("G_charbonnier", "G", "p2p.losses.charbonnier:charbonnier", "loss.lambda_charbonnier", 0.0,
                         "Charbonnier loss weight: mean sqrt((G(x)-y)^2 + 1e-6), a smooth L1 (0 = off)"))
