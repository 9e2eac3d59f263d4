"""Frequency-bias probes: how much a trained classifier leans on low versus high frequencies.

Robustmix's claim is that mixing low and high bands with different weights pushes a network
towards low-frequency ("shape-like") cues, and that this is why it holds up under corruptions.
These probes measure that bias for any model that takes [0, 1] images:

* :func:`filtered_accuracy`: accuracy on low-passed and high-passed test images over a sweep of
  cutoffs, with the same DCT box as the mixing op (:func:`robustmix.freq.lowpass`).
* :func:`fourier_heatmap`: error under a single Fourier-basis perturbation of fixed L2 norm, over
  the frequency plane (Yin et al., "A Fourier perspective on model robustness", NeurIPS 2019).
* :func:`cue_conflict`: hybrid images (low band of class A + high band of class B); the share of
  decisions that follow the low band. :func:`cue_conflict_folder` scores a model-vs-human style
  cue-conflict folder (shape vs texture) when a user has one.
* :func:`energy_spectrum` and :func:`lambda_c_curve`: where a dataset's energy lies in the DCT
  plane, and the label weight ``lam_c`` that Robustmix's ``energy="batch"`` mode gives per cutoff.

All probes are batched, run under ``torch.inference_mode`` with the model in eval mode (its
previous mode is restored), and draw randomness only from an explicit seed/generator.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from robustmix.freq import band_sizes, dct, highpass, lowpass

__all__ = [
    "cue_conflict",
    "cue_conflict_folder",
    "energy_spectrum",
    "filtered_accuracy",
    "fourier_basis",
    "fourier_heatmap",
    "lambda_c_curve",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------------------------
# Shared helpers


def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")


def _check_labels(labels: Tensor, n: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be an integer torch.Tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match images, got {tuple(labels.shape)}")
    return labels.long().cpu()  # compared with predictions gathered on the CPU


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _check_cutoffs(cutoffs: Sequence[float]) -> list[float]:
    out = [float(c) for c in cutoffs]
    if not out:
        raise ValueError("cutoffs must contain at least one value, got an empty sequence")
    bad = [c for c in out if not 0.0 <= c <= 1.0]
    if bad:
        raise ValueError(f"cutoffs must lie in [0, 1], got {bad}")
    return out


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    # Diagnostics must not update BatchNorm statistics or see dropout; restore the caller's mode
    # module by module (a model in training with a frozen BatchNorm inside stays that way).
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _predict(model: nn.Module, images: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """Arg-max class of every image, computed in batches; returns a CPU int64 tensor (N,)."""
    preds = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        preds.append(model(batch).argmax(dim=1).cpu())
    return torch.cat(preds)


# --------------------------------------------------------------------------------------------
# Accuracy on filtered images


def filtered_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    cutoffs: Sequence[float],
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, list[float]]:
    """Accuracy on low-passed and on high-passed images, one value per cutoff.

    The bands are the mixing op's DCT box: ``lowpass(x, c)`` keeps the ``floor(c*n + 0.5)``
    lowest DCT indices along H and W, ``highpass = x - lowpass``.

    A high-passed image has no DC term, so its pixels scatter around 0 while the model was
    trained on images around the data's mean grey. We therefore add back the per-channel mean of
    ``images`` (the "dataset mean grey level") whenever the band removes the DC coefficient
    (``k >= 1``): the image keeps only its high frequencies but sits where the model expects
    its input. The result is **not** clipped to [0, 1]: clipping would put low frequencies back
    in. Low-passed images are not clipped either (they stay near [0, 1]).

    Args:
        model: classifier taking [0, 1] images (N, C, H, W) and returning logits (N, K).
        images: float (N, C, H, W) in [0, 1].
        labels: int (N,).
        cutoffs: values in [0, 1].
        batch_size: images per forward pass.
        device: where to run the model; default: the model's device.

    Returns:
        ``{"cutoffs", "lowpass_accuracy", "highpass_accuracy"}`` (lists of floats, same order).
    """
    _check_images(images)
    labels = _check_labels(labels, images.shape[0])
    cutoffs = _check_cutoffs(cutoffs)
    batch_size = _check_batch_size(batch_size)
    dev = _model_device(model, device)
    grey = images.mean(dim=(0, 2, 3), keepdim=True)
    low_acc, high_acc = [], []
    with _evaluating(model):
        for c in cutoffs:
            removes_dc = min(band_sizes(c, images.shape[-2:])) >= 1
            low_pred, high_pred = [], []
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(dev)
                high = highpass(batch, c)
                if removes_dc:
                    high = high + grey.to(dev, high.dtype)
                low_pred.append(model(lowpass(batch, c)).argmax(dim=1).cpu())
                high_pred.append(model(high).argmax(dim=1).cpu())
            low_acc.append(float((torch.cat(low_pred) == labels).double().mean()))
            high_acc.append(float((torch.cat(high_pred) == labels).double().mean()))
    return {"cutoffs": cutoffs, "lowpass_accuracy": low_acc, "highpass_accuracy": high_acc}


# --------------------------------------------------------------------------------------------
# Fourier heat map (Yin et al. 2019)


def fourier_basis(
    height: int, width: int, freqs: Tensor, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Unit-L2-norm real Fourier basis images, one per frequency.

    ``U_{u,v}[y, x] = cos(2 pi (u y / H + v x / W)) / ||.||_2``: the real image whose 2-D DFT is
    non-zero only at ``(u, v)`` and its mirror ``(-u, -v)`` (Yin et al. 2019).

    Args:
        height, width: image size.
        freqs: int tensor (F, 2) of ``(u, v)`` DFT indices (any integers; taken modulo H, W).

    Shape: returns (F, H, W).
    """
    f = freqs.to(device="cpu", dtype=torch.float64)  # built on the host, then moved
    y = torch.arange(height, dtype=torch.float64, device="cpu").view(1, -1, 1)
    x = torch.arange(width, dtype=torch.float64, device="cpu").view(1, 1, -1)
    phase = 2 * math.pi * (f[:, 0].view(-1, 1, 1) * y / height + f[:, 1].view(-1, 1, 1) * x / width)
    basis = torch.cos(phase)
    basis = basis / basis.flatten(1).norm(dim=1).view(-1, 1, 1)
    return basis.to(device=device, dtype=dtype)


def _canonical_frequencies(height: int, width: int, stride: int, max_freq: int | None) -> Tensor:
    """One representative ``(u, v)`` per mirror pair ``{(u, v), (-u, -v)}``, centred indices."""
    us = torch.arange(-(height // 2), height - height // 2, device="cpu")
    vs = torch.arange(-(width // 2), width - width // 2, device="cpu")
    keep_u = (us % stride == 0) if max_freq is None else (us % stride == 0) & (us.abs() <= max_freq)
    keep_v = (vs % stride == 0) if max_freq is None else (vs % stride == 0) & (vs.abs() <= max_freq)
    grid = torch.stack(torch.meshgrid(us[keep_u], vs[keep_v], indexing="ij"), dim=-1).reshape(-1, 2)
    # (u, v) and its mirror give the same basis image; keep the lexicographically smaller one
    # (as residues mod H, W) so each distinct image is evaluated once.
    res = torch.stack([grid[:, 0] % height, grid[:, 1] % width], dim=1)
    mir = torch.stack([(-grid[:, 0]) % height, (-grid[:, 1]) % width], dim=1)
    is_rep = (res[:, 0] < mir[:, 0]) | ((res[:, 0] == mir[:, 0]) & (res[:, 1] <= mir[:, 1]))
    return grid[is_rep]


def fourier_heatmap(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    max_freq: int | None = None,
    stride: int = 1,
    per_channel_sign: bool = True,
    seed: int = 0,
) -> Tensor:
    """Top-1 error under a single Fourier-basis perturbation, for each frequency.

    For each frequency ``(u, v)``: ``x' = clip(x + r * eps * U_{u,v}, 0, 1)`` with ``U`` the unit
    norm basis image of :func:`fourier_basis` added to every channel (so the L2 norm of the
    perturbation is ``eps`` per channel) and ``r`` a random sign per image (and per channel when
    ``per_channel_sign``), as in Yin et al. (2019). ``(u, v)`` and ``(-u, -v)`` give the same
    image, so only one of each pair is evaluated and the map is filled by symmetry.

    Args:
        model: classifier on [0, 1] images.
        images: float (N, C, H, W) in [0, 1]; labels: int (N,).
        eps: L2 norm of the perturbation per channel (pixel units, [0, 1] scale).
        batch_size: perturbed images per forward pass (many frequencies share one batch).
        max_freq: only evaluate ``|u|, |v| <= max_freq`` (for large images).
        stride: only evaluate every ``stride``-th frequency along each axis (for large images).
        per_channel_sign: independent random sign per channel (else one per image).
        seed: seeds the random signs.

    Returns:
        float64 tensor (H, W), centred like ``numpy.fft.fftshift``: entry ``[i, j]`` is the error
        at ``u = i - H // 2``, ``v = j - W // 2``. Frequencies not evaluated are NaN.
    """
    _check_images(images)
    labels = _check_labels(labels, images.shape[0])
    batch_size = _check_batch_size(batch_size)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if max_freq is not None and (isinstance(max_freq, bool) or not isinstance(max_freq, int) or max_freq < 0):
        raise ValueError(f"max_freq must be None or a non-negative int, got {max_freq!r}")
    n, c, h, w = images.shape
    dev = _model_device(model, device)
    freqs = _canonical_frequencies(h, w, stride, max_freq)
    generator = torch.Generator().manual_seed(int(seed))
    # Frequencies per forward pass: as many as fit with a whole copy of the images each; if even
    # one copy does not fit, the images are split too.
    f_per_batch = max(1, batch_size // n)
    img_chunk = min(n, batch_size)
    errors = torch.empty(freqs.shape[0], dtype=torch.float64, device="cpu")
    with _evaluating(model):
        for f0 in range(0, freqs.shape[0], f_per_batch):
            fr = freqs[f0 : f0 + f_per_batch]
            basis = fourier_basis(h, w, fr, device=dev, dtype=images.dtype)  # (F, H, W)
            wrong = torch.zeros(fr.shape[0], dtype=torch.float64, device="cpu")
            for i0 in range(0, n, img_chunk):
                x = images[i0 : i0 + img_chunk].to(dev)
                m = x.shape[0]
                sign_shape = (fr.shape[0], m, c if per_channel_sign else 1, 1, 1)
                sign = torch.randint(0, 2, sign_shape, generator=generator, device=generator.device)
                sign = sign.to(dev, x.dtype) * 2 - 1
                pert = (x.unsqueeze(0) + eps * sign * basis[:, None, None]).clamp_(0, 1)
                pred = model(pert.reshape(-1, c, h, w)).argmax(dim=1).cpu().view(fr.shape[0], m)
                wrong += (pred != labels[i0 : i0 + m].view(1, -1)).sum(dim=1).double()
            errors[f0 : f0 + fr.shape[0]] = wrong / n
    heat = torch.full((h, w), float("nan"), dtype=torch.float64, device="cpu")
    for (u, v), e in zip(freqs.tolist(), errors.tolist()):
        # The centred grid holds every residue mod (H, W) once; the mirror (-u, -v) is taken
        # modulo the size so the Nyquist row/column of even sizes lands on the grid too.
        heat[(u + h // 2) % h, (v + w // 2) % w] = e
        heat[(-u + h // 2) % h, (-v + w // 2) % w] = e
    return heat


# --------------------------------------------------------------------------------------------
# Cue conflict


def cue_conflict(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    cutoff: float,
    generator: torch.Generator | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """Share of decisions on low/high-band hybrids that follow the low band.

    Each image A is paired (random permutation) with an image B of a different class; the hybrid
    is ``clip(lowpass(A, cutoff) + highpass(B, cutoff), 0, 1)``. Among hybrids classified as A's
    or B's class, ``low_band_fraction`` is the share classified as A. This is a frequency-domain
    stand-in for the Stylized-ImageNet shape bias (Geirhos et al. 2019): a low-frequency-biased
    model scores near 1. Pairs with equal labels are dropped.

    Args:
        cutoff: the band split, in (0, 1).
        generator: torch Generator for the pairing; default ``torch.Generator().manual_seed(seed)``.

    Returns:
        ``{"low_band_fraction", "high_band_fraction", "n", "n_pairs"}`` where ``n`` counts hybrids
        that followed either cue and ``n_pairs`` all hybrids evaluated.
    """
    _check_images(images)
    labels = _check_labels(labels, images.shape[0])
    batch_size = _check_batch_size(batch_size)
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be a float in (0, 1), got {cutoff!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    partner = torch.randperm(images.shape[0], generator=generator, device=generator.device).cpu()
    keep = labels != labels[partner]
    idx_a, idx_b = torch.nonzero(keep).flatten(), partner[keep]
    dev = _model_device(model, device)
    preds = []
    with _evaluating(model):
        for start in range(0, idx_a.shape[0], batch_size):
            a = images[idx_a[start : start + batch_size]].to(dev)
            b = images[idx_b[start : start + batch_size]].to(dev)
            hybrid = (lowpass(a, cutoff) + highpass(b, cutoff)).clamp_(0, 1)
            preds.append(model(hybrid).argmax(dim=1).cpu())
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device="cpu")
    low = int((pred == labels[idx_a]).sum())
    high = int((pred == labels[idx_b]).sum())
    total = low + high
    return {
        "low_band_fraction": low / total if total else float("nan"),
        "high_band_fraction": high / total if total else float("nan"),
        "n": total,
        "n_pairs": int(idx_a.shape[0]),
    }


def _texture_of(filename: str) -> str:
    # model-vs-human names cue-conflict images '<shape><k>-<texture><m>.png', e.g. 'cat1-elephant2.png'.
    stem = Path(filename).stem
    if "-" not in stem:
        raise ValueError(f"cue-conflict file {filename!r} is not named '<shape><k>-<texture><m>.<ext>'")
    return re.sub(r"\d+$", "", stem.rsplit("-", 1)[1])


def _load_image(path: Path, *, channels: int, image_size: int | None) -> Tensor:
    # PIL (a torchvision dependency) rather than torchvision.io, whose codecs are deprecated.
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor, resize

    with Image.open(path) as im:
        img = pil_to_tensor(im.convert("L" if channels == 1 else "RGB")).float() / 255.0
    if image_size is not None and tuple(img.shape[-2:]) != (image_size, image_size):
        img = resize(img, [image_size, image_size], antialias=True).clamp_(0, 1)
    return img


def cue_conflict_folder(
    model: nn.Module,
    root: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[int]] | None = None,
    in_channels: int = 3,
    image_size: int | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """Shape bias on a model-vs-human style cue-conflict folder.

    Layout: ``root/<shape_category>/<shape><k>-<texture><m>.png``. Images whose shape and
    texture agree are skipped. Each remaining image is assigned the category with the highest
    score, where a category's score is the mean softmax probability over the model classes it
    maps to (``categories``, as model-vs-human does for ImageNet models), or the model class with
    the category's name (``class_names``, for a model trained on those categories directly).

    Returns:
        ``{"shape_fraction", "texture_fraction", "n", "n_images"}``: shares among decisions that
        follow shape or texture, ``n`` such decisions, ``n_images`` images evaluated.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root must be a cue-conflict folder '<shape>/<shape>k-<texture>m.png', {str(root)!r} is not a directory")
    if (class_names is None) == (categories is None):
        raise ValueError("give exactly one of class_names (model classes named like the folders) or categories (folder name -> model class indices)")
    if categories is None:
        index = {name: i for i, name in enumerate(class_names)}
        categories = {d.name: [index[d.name]] for d in sorted(root.iterdir()) if d.is_dir() and d.name in index}
    names = sorted(categories)
    if not names:
        raise ValueError(f"no category of {root} matches the model's classes; folders: {sorted(d.name for d in root.iterdir())}")
    items = []
    for shape in names:
        folder = root / shape
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in _IMAGE_SUFFIXES:
                texture = _texture_of(f.name)
                if texture != shape:
                    items.append((f, shape, texture))
    if not items:
        raise ValueError(f"found no cue-conflict images (shape != texture) under {root}")
    batch_size = _check_batch_size(batch_size)
    dev = _model_device(model, device)
    members = [torch.as_tensor(list(categories[k]), dtype=torch.long, device="cpu") for k in names]
    decisions: list[str] = []
    with _evaluating(model):
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            x = torch.stack([_load_image(f, channels=in_channels, image_size=image_size) for f, _, _ in chunk])
            prob = model(x.to(dev)).float().softmax(dim=1).cpu()
            scores = torch.stack([prob[:, m].mean(dim=1) for m in members], dim=1)
            decisions.extend(names[i] for i in scores.argmax(dim=1).tolist())
    shape_hits = sum(d == s for d, (_, s, _) in zip(decisions, items))
    texture_hits = sum(d == t for d, (_, _, t) in zip(decisions, items))
    total = shape_hits + texture_hits
    return {
        "shape_fraction": shape_hits / total if total else float("nan"),
        "texture_fraction": texture_hits / total if total else float("nan"),
        "n": total,
        "n_images": len(items),
    }


# --------------------------------------------------------------------------------------------
# Dataset spectra


def energy_spectrum(images: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Mean squared orthonormal DCT-II coefficient per ``(u, v)``, over images and channels.

    Shape: images (N, C, H, W) -> float64 (H, W). By Parseval its sum is the mean energy per
    image channel.
    """
    _check_images(images)
    batch_size = _check_batch_size(batch_size)
    total = torch.zeros(images.shape[-2:], dtype=torch.float64, device="cpu")
    for start in range(0, images.shape[0], batch_size):
        coef = dct(images[start : start + batch_size].to(torch.float64))
        total += coef.square().sum(dim=(0, 1)).cpu()
    return total / (images.shape[0] * images.shape[1])


def lambda_c_curve(
    images: Tensor | None = None, cutoffs: Sequence[float] = (), *, spectrum: Tensor | None = None
) -> list[float]:
    """Energy share of the DCT low band per cutoff: the op's ``energy="batch"`` label weight.

    ``lam_c(c) = sum_i |lowpass(x_i, c)|^2 / sum_i |x_i|^2`` over all images (0/0 counts as 1).
    Robustmix mixes *normalised* images, so pass ``(x - mean) / std`` to see what the op does.
    Give either ``images`` (N, C, H, W) or a precomputed :func:`energy_spectrum`.
    """
    cutoffs = _check_cutoffs(cutoffs)
    if (images is None) == (spectrum is None):
        raise ValueError("give exactly one of images or spectrum")
    spec = energy_spectrum(images) if spectrum is None else spectrum.detach().to("cpu", torch.float64)
    if spec.ndim != 2:
        raise ValueError(f"spectrum must be a (H, W) tensor, got shape {tuple(spec.shape)}")
    total = float(spec.sum())
    out = []
    for c in cutoffs:
        kh, kw = band_sizes(c, spec.shape)
        out.append(float(spec[:kh, :kw].sum()) / total if total > 0 else 1.0)
    return out
