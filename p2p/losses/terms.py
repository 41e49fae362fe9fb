"""The forwards of the loss terms registered in `p2p.specs.losses.LOSSES`: each takes the step's
view (`p2p.train.step.StepView`: the batch, the fake, the discriminator's outputs of the shared
passes, the networks) and its weight, and returns its weighted loss as a float32 scalar tensor.
Each is the same operations, in the same order, as the official step's line for it."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from p2p import losses


def generator_gan(view, weight: float) -> torch.Tensor:
    """Fool the frozen discriminator (unweighted: `weight` is 1)."""
    logits = [p[-1] for p in view.pred] if view.d_features else view.pred
    return losses.gan_loss_over_scales(logits, True, view.loss.gan_mode, for_discriminator=False)


def l1(view, weight: float) -> torch.Tensor:
    return F.l1_loss(view.fake, view.target) * weight


def discriminator_real(view, weight: float) -> torch.Tensor:
    return losses.gan_loss_over_scales(view.pred_real, True, view.loss.gan_mode)


def discriminator_fake(view, weight: float) -> torch.Tensor:
    return losses.gan_loss_over_scales(view.pred_fake, False, view.loss.gan_mode)


def gradient_penalty(view, weight: float) -> torch.Tensor:
    """WGAN-GP on the D update's pairs (the fake one detached)."""
    with view.precision.autocast():
        return losses.gradient_penalty(view.nets.D, view.real_pair, view.fake_pair, weight)


def feature_matching(view, weight: float) -> torch.Tensor:
    """The real pair's features under the same (just updated) discriminator are constants."""
    with view.precision.autocast(), torch.no_grad():
        real = losses.per_scale(view.nets.D_frozen(view.real_pair, features=True), True)
    return losses.feature_matching(view.pred, real, weight)


def feature_matching_flops(counts) -> float:
    """One more D forward: the real pair's, without a backward."""
    return counts.d_forward


def perceptual(view, weight: float) -> torch.Tensor:
    """The VGG19 loss module built for this term (its weight is built into it)."""
    with view.precision.autocast():
        return view.nets.loss_modules["G_VGG"](view.inp, view.fake, view.target)


def perceptual_module(loss, task, device: torch.device):
    """The frozen VGG19 loss; a missing or wrong weights file is a UsageError here, before any
    step runs."""
    from p2p.perceptual import build_perceptual_loss

    return build_perceptual_loss(loss.vgg_weights, task.output_rgb_autograd, loss.lambda_vgg, device)


def perceptual_flops(counts) -> float:
    """Three VGG forwards: the fake image's and its input-gradient backward, and the real one's."""
    from p2p.perceptual import vgg19_features

    with torch.device("meta"):
        vgg = vgg19_features()
    return 3 * counts.forward_flops(vgg, (1, 3, counts.image_size, counts.image_size))
