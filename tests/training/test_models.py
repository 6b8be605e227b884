"""training.models: shapes, zero-initialised new layers, condition wiring and dropping, DDP-safe
gradients per stage, temporal mixing, and loading an SD 1.5-layout diffusers folder."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from training.models import DROPPABLE, Conditions, ModelConfig, build_codec, build_model

# a fast variant of tiny (4x4 attention) with both input images, so that the tests below
# cover the "motion" one, which the tiny default leaves out
SMALL = dict(image_size=32, frames=3, motion_frames=2, input_images=("reference", "motion"))


def make_cond(cfg: ModelConfig, b: int, f: int, m: int, seed: int = 0) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    s, c = cfg.image_size, cfg.latent_channels
    mask = torch.zeros(b, f, 1, s, s)
    mask[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
    return Conditions(
        reference_latent=torch.randn(b, c, s, s, generator=g),
        motion_latents=torch.randn(b, m, c, s, s, generator=g),
        audio=torch.randn(b, f, cfg.audio_context, cfg.audio_dim, generator=g),
        expression=torch.randn(b, f, cfg.expression_dim, generator=g),
        jaw_pose=torch.randn(b, f, 3, generator=g),
        emotion=torch.arange(b) % cfg.num_emotions,
        intensity=torch.linspace(0.5, 1.5, b),
        face_mask=mask,
        mouth_mask=mask[:, 0] * (torch.arange(s) >= s // 2).float()[:, None],  # box's lower half
        head_speed=torch.rand(b, f, generator=g) * 40,
    )


def make_input(cfg: ModelConfig, b: int, f: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(b, f, cfg.latent_channels, cfg.image_size, cfg.image_size, generator=g)
    return noisy, torch.tensor([999, 250, 500, 10][:b])


def drop_all(b: int, which: list[int]) -> dict[str, torch.Tensor]:
    d = torch.zeros(b, dtype=torch.bool)
    d[which] = True
    return {name: d.clone() for name in DROPPABLE}


def perturb(model: torch.nn.Module, seed: int = 3, parts: tuple[str, ...] | None = None) -> None:
    """Random values for the zero-initialised parameters of the new layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            top = name.split(".")[0]
            if top in ("denoiser", "reference_net") or bool(p.any()):
                continue
            if parts is None or any(name.startswith(q) for q in parts):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are small: one thread avoids OpenMP barrier stalls on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small() -> tuple[ModelConfig, torch.nn.Module]:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(**SMALL)
    return cfg, build_model(cfg).eval()


def run(model, noisy, t, cond) -> torch.Tensor:
    with torch.no_grad():
        return model(noisy, t, cond)


# --- config --------------------------------------------------------------------------------------

def test_config_json_roundtrip_and_unknown_keys(tmp_path):
    for cfg in (ModelConfig.tiny(), ModelConfig.base(tmp_path)):
        text = json.dumps(dataclasses.asdict(cfg))
        assert ModelConfig.from_dict(json.loads(text)) == cfg
    with pytest.raises(ValueError, match="valid keys.*image_size"):
        ModelConfig.from_dict({"image_sise": 32})
    base = ModelConfig.base(tmp_path)
    assert (base.image_size, base.frames, base.motion_frames, base.audio_dim) == (512, 12, 4, 512)
    assert base.block_out_channels == (320, 640, 1280, 1280) and base.cross_attention_dim == 768


def test_speed_buckets_follow_emo_tanh_assignment():
    from training.models.conditions import SpeedLayers

    layers = SpeedLayers((0.0, 5.0, 10.0, 20.0, 40.0, 80.0), 8, [4])
    # radii: half the distance to the nearest other centre = 2.5, 2.5, 2.5, 5, 10, 20
    got = layers.buckets(torch.tensor([[7.5, 20.0]]))[0]
    want = torch.tanh(torch.tensor([
        [3 * 7.5 / 2.5, 3 * 2.5 / 2.5, 3 * -2.5 / 2.5, 3 * -12.5 / 5, 3 * -32.5 / 10, -3 * 72.5 / 20],
        [3 * 20 / 2.5, 3 * 15 / 2.5, 3 * 10 / 2.5, 0.0, 3 * -20 / 10, 3 * -60 / 20]]))
    torch.testing.assert_close(got, want)
    out = layers(torch.tensor([[7.5, 20.0]]))
    assert len(out) == 1 and out[0].shape == (1, 2, 4) and not out[0].any()  # zero-initialised


# --- shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("f,m", [(4, 2), (1, 0)])
def test_tiny_forward_shapes(f, m):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    assert (cfg.image_size, cfg.frames, cfg.motion_frames, cfg.codec) == (64, 4, 2, "pixel")
    model = build_model(cfg)
    noisy, t = make_input(cfg, 2, f)
    out = run(model, noisy, t, make_cond(cfg, 2, f, m))
    assert out.shape == (2, f, 3, 64, 64) and torch.isfinite(out).all()
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    codec = build_codec(cfg)
    assert torch.equal(codec.encode(pixels), pixels)
    assert not any(p.requires_grad for p in codec.parameters())


# --- zero-initialised layers against a plain diffusers UNet --------------------------------------

def plain_unet(cfg, state) -> UNet2DConditionModel:
    """A diffusers UNet with `state`; a widened first convolution's input-image weights (zero at
    initialisation: test_input_images_start_with_no_effect) are left out."""
    unet = UNet2DConditionModel(**cfg.unet_kwargs(cfg.image_size))
    state = {**state, "conv_in.weight": state["conv_in.weight"][:, :cfg.latent_channels]}
    unet.load_state_dict(state)
    return unet.eval()


class RefAttn:
    """Reference self-attention written out: softmax(q [k;k_ref]^T / sqrt(d)) [v;v_ref]."""

    def __init__(self, feats: torch.Tensor, frames: int) -> None:
        self.ref = feats.repeat_interleave(frames, dim=0)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None):
        kv = torch.cat([hidden_states, self.ref], dim=1)
        q, k, v = attn.to_q(hidden_states), attn.to_k(kv), attn.to_v(kv)
        n, d = q.shape[0], q.shape[-1] // attn.heads
        q, k, v = (x.view(n, -1, attn.heads, d).transpose(1, 2) for x in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        out = (w @ v).transpose(1, 2).reshape(n, -1, attn.heads * d)
        return attn.to_out[0](out)


def expected_output(model, cfg, noisy, t, cond, keep_reference: bool) -> torch.Tensor:
    """Plain UNet2DConditionModels with the model's weights, frame by frame, with the null
    context tokens and (optionally) reference attention on a plain ReferenceNet at t=0."""
    b, f = noisy.shape[:2]
    den = plain_unet(cfg, model.denoiser.state_dict())
    procs = {k: AttnProcessor() for k in den.attn_processors}
    if keep_reference:
        ref = plain_unet(cfg, model.reference_net.unet.state_dict())
        feats = {}
        for name, mod in ref.named_modules():
            if name.endswith("attn1"):
                mod.register_forward_pre_hook(
                    lambda m, a, k, name=name: feats.__setitem__(name, a[0]), with_kwargs=True)
        ref(cond.reference_latent, torch.zeros(b, dtype=torch.long),
            encoder_hidden_states=model.reference_net.context.expand(b, -1, -1))
        procs.update({f"{n}.processor": RefAttn(x, f) for n, x in feats.items()})
    den.set_attn_processor(procs)
    null = torch.cat([model.context.audio_null, model.context.expression_null])
    return den(noisy.flatten(0, 1), t.repeat_interleave(f),
               encoder_hidden_states=null.expand(b * f, -1, -1)).sample.unflatten(0, (b, f))


@pytest.mark.parametrize("keep_reference", [False, True])
def test_new_layers_start_as_identity(small, keep_reference):
    cfg, model = small
    b, f, m = 2, 3, 2
    noisy, t = make_input(cfg, b, f)
    cond = make_cond(cfg, b, f, m)
    cond.drop = {n: torch.ones(b, dtype=torch.bool) for n in ("audio", "expression", "motion")}
    cond.drop["reference"] = torch.full((b,), not keep_reference)
    with torch.no_grad():
        want = expected_output(model, cfg, noisy, t, cond, keep_reference)
        got = model(noisy, t, cond)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_zero_initialised_layers_change_the_output_once_perturbed(small):
    """Speed acts through the temporal layers, so it is compared with perturbed temporal layers."""
    cfg, model = small
    noisy, t = make_input(cfg, 1, 3)
    cond = make_cond(cfg, 1, 3, 2)
    temporal = copy.deepcopy(model)
    perturb(temporal, parts=("temporal",))
    start = {"temporal": model, "face_locator": model, "emotion": model, "speed": temporal,
             "audio_time": model, "audio_locator": model}
    outputs = {id(m): run(m, noisy, t, cond) for m in (model, temporal)}
    for part, before in start.items():
        other = copy.deepcopy(before)
        perturb(other, parts=(part,))
        assert (run(other, noisy, t, cond) - outputs[id(before)]).abs().max() > 1e-4, part


# --- every condition reaches the output; drop removes it -----------------------------------------

CHANGES = {
    "audio": lambda c: dataclasses.replace(c, audio=c.audio.flip(-1)),
    "expression": lambda c: dataclasses.replace(c, expression=c.expression + 1.0,
                                                jaw_pose=c.jaw_pose - 0.5),
    "emotion": lambda c: dataclasses.replace(c, emotion=(c.emotion + 3) % 7,
                                             intensity=c.intensity * 2),
    "reference": lambda c: dataclasses.replace(c, reference_latent=-c.reference_latent),
    "motion": lambda c: dataclasses.replace(c, motion_latents=c.motion_latents.flip(0) * 0.5),
    "face_mask": lambda c: dataclasses.replace(c, face_mask=1 - c.face_mask),
    "head_speed": lambda c: dataclasses.replace(c, head_speed=c.head_speed + 30),
}


@pytest.fixture(scope="module")
def perturbed(small):
    cfg, model = small
    other = copy.deepcopy(model)
    perturb(other)
    return cfg, other


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_condition_reaches_output_and_drop_removes_it(perturbed, name):
    cfg, model = perturbed
    b, f, m = 2, 3, 2
    noisy, t = make_input(cfg, b, f)
    cond = make_cond(cfg, b, f, m)
    base, changed = run(model, noisy, t, cond), run(model, noisy, t, CHANGES[name](cond))
    assert (base - changed).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4  # both samples change
    if name not in DROPPABLE:
        return
    dropped = dataclasses.replace(cond, drop={name: torch.tensor([True, False])})
    base = run(model, noisy, t, dropped)
    changed = run(model, noisy, t, CHANGES[name](dropped))
    torch.testing.assert_close(changed[0], base[0], atol=1e-6, rtol=0)  # sample 0: independent
    assert (changed[1] - base[1]).abs().max() > 1e-4  # sample 1 still conditioned


def test_unknown_emotion_is_the_dropped_emotion(perturbed):
    cfg, model = perturbed
    noisy, t = make_input(cfg, 2, 3)
    cond = make_cond(cfg, 2, 3, 2)
    unknown = run(model, noisy, t, dataclasses.replace(cond, emotion=torch.tensor([-1, -1])))
    dropped = run(model, noisy, t, dataclasses.replace(cond, drop={"emotion": torch.ones(2) > 0}))
    torch.testing.assert_close(unknown, dropped, atol=1e-6, rtol=0)


# --- temporal mixing -----------------------------------------------------------------------------

def test_frames_independent_at_init_and_mixed_after_training(small, perturbed):
    for (cfg, model), mixes in ((small, False), (perturbed, True)):
        noisy, t = make_input(cfg, 1, 3)
        cond = make_cond(cfg, 1, 3, 2)
        other = noisy.clone()
        other[:, 0] += 1.0
        a, b = run(model, noisy, t, cond), run(model, other, t, cond)
        assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3
        diff = (a[:, 2] - b[:, 2]).abs().max()
        assert diff > 1e-4 if mixes else diff < 1e-6


def test_single_frame_without_motion(perturbed):
    cfg, model = perturbed
    noisy, t = make_input(cfg, 2, 1)
    out = run(model, noisy, t, make_cond(cfg, 2, 1, 0))
    assert out.shape == (2, 1, 3, cfg.image_size, cfg.image_size) and torch.isfinite(out).all()


# --- stages and gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("stage,f,m", [(1, 1, 0), (2, 3, 2), (3, 3, 2)])
def test_every_trainable_parameter_gets_a_gradient(perturbed, stage, f, m):
    """DDP needs every trainable parameter in the graph even when sample 0 drops everything."""
    cfg, base = perturbed
    model = copy.deepcopy(base).train()
    params = model.trainable_parameters(stage)
    noisy, t = make_input(cfg, 2, f)
    cond = make_cond(cfg, 2, f, m)
    cond.drop = drop_all(2, [0])
    model(noisy, t, cond).pow(2).mean().backward()
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [names[id(p)] for p in params if p.grad is None]
    assert not missing, missing
    zero = [names[id(p)] for p in params if not p.grad.any()]
    assert not zero, zero
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen
    tops = {names[id(p)].split(".")[0] for p in params}
    assert tops == {1: {"denoiser", "reference_net", "face_locator"},
                    2: {"temporal", "motion", "context", "emotion", "audio_time", "audio_locator",
                        "denoiser"},
                    3: {"temporal", "speed"}}[stage]
    if stage == 2:
        assert all(".attn2." in names[id(p)] for p in params
                   if names[id(p)].startswith("denoiser."))


def test_reference_net_unused_parameters_are_exactly_the_gradientless_ones(small):
    """Stage 1 (no motion): the ReferenceNet parameters without gradient are the listed ones:
    none at all, or zero but for rounding (the query and key paths of the cross-attention to its
    one token: about 1e-16 against gradients of about 1e-4)."""
    cfg, base = small
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(True)
    noisy, t = make_input(cfg, 1, 1)
    model(noisy, t, make_cond(cfg, 1, 1, 0)).pow(2).mean().backward()
    grads = dict(model.reference_net.named_parameters())
    largest = max(p.grad.abs().max() for p in grads.values() if p.grad is not None)
    no_grad = {n for n, p in grads.items()
               if p.grad is None or p.grad.abs().max() < 1e-9 * largest}
    assert no_grad == set(model.reference_net.unused_by_reference_attention())
    assert no_grad  # the last transformer's tail and the unused up path exist


def test_gradient_checkpointing_gives_the_same_gradients(perturbed):
    cfg, base = perturbed
    grads = []
    for enabled in (False, True):
        model = copy.deepcopy(base).train()
        params = model.trainable_parameters(2)
        model.set_gradient_checkpointing(enabled)
        noisy, t = make_input(cfg, 2, 3)
        model(noisy, t, make_cond(cfg, 2, 3, 2)).pow(2).mean().backward()
        grads.append([p.grad for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_deepcopy_hooks_follow_the_copy(small):
    cfg, model = small
    noisy, t = make_input(cfg, 1, 3)
    cond = make_cond(cfg, 1, 3, 2)
    before = run(model, noisy, t, cond)
    other = copy.deepcopy(model)
    perturb(other, parts=("temporal",))
    assert (run(other, noisy, t, cond) - before).abs().max() > 1e-4
    torch.testing.assert_close(run(model, noisy, t, cond), before, atol=0, rtol=0)


def test_audio_reaches_output_through_the_time_embedding_alone(small):
    """With the cross-attention's audio projection zeroed (its audio tokens no longer depend on
    the audio), the audio still changes the output through FrameAudio; a dropped audio
    gives the null offset; without the option the model has no such layer."""
    cfg, base = small
    assert cfg.audio_time_embedding  # the tiny default
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.context.audio_proj.parameters():
            p.zero_()
    perturb(model, parts=("audio_time",))
    b, f, m = 2, 3, 2
    noisy, t = make_input(cfg, b, f)
    cond = make_cond(cfg, b, f, m)
    changed = CHANGES["audio"]
    assert (run(model, noisy, t, cond) - run(model, noisy, t, changed(cond))).abs().max() > 1e-4
    dropped = dataclasses.replace(cond, drop={"audio": torch.tensor([True, False])})
    out, out_changed = run(model, noisy, t, dropped), run(model, noisy, t, changed(dropped))
    torch.testing.assert_close(out_changed[0], out[0], atol=1e-6, rtol=0)
    assert (out_changed[1] - out[1]).abs().max() > 1e-4
    assert build_model(dataclasses.replace(cfg, audio_time_embedding=False)).audio_time is None


def test_audio_locator_paints_only_near_the_mouth_and_follows_the_audio():
    """Its output is zero farther than its two 3x3 convolutions reach (2 px) from the mouth
    mask, changes with the audio inside, and a dropped audio gives the same output whatever the
    audio."""
    import torch.nn.functional as F

    from training.models.conditions import AudioLocator

    torch.manual_seed(0)
    locator = AudioLocator(audio_dim=16, audio_rows=3, hidden=8, channels=4, out_channels=3)
    perturb(locator)
    mouth = torch.zeros(2, 1, 16, 16)
    mouth[..., 10:13, 5:11] = 1
    audio = torch.randn(2, 2, 3, 16)
    keep = torch.tensor([True, False])
    out = locator(2, 2, audio, mouth, keep, (16, 16))
    near = F.max_pool2d(mouth, 5, 1, 2).repeat_interleave(2, dim=0) > 0  # [B*F,1,16,16]
    assert out.shape == (4, 3, 16, 16)
    assert out.masked_select(~near.expand_as(out)).abs().max() == 0
    other = locator(2, 2, -audio, mouth, keep, (16, 16))
    assert (other[:2] - out[:2]).abs().max() > 1e-4  # kept: follows the audio
    torch.testing.assert_close(other[2:], out[2:], atol=0, rtol=0)  # dropped: the null


# --- input images: the reference and the last motion frame as extra input channels ----------------

def test_input_images_start_with_no_effect(small):
    """The widened first convolution's new weights are zero: the model computes exactly what the
    same weights without input images compute."""
    cfg, model = small
    assert cfg.input_images == ("reference", "motion")  # SMALL's
    plain = build_model(dataclasses.replace(cfg, input_images=())).eval()
    state = model.state_dict()
    state["denoiser.conv_in.weight"] = state["denoiser.conv_in.weight"][:, :cfg.latent_channels]
    plain.load_state_dict(state)
    noisy, t = make_input(cfg, 2, 3)
    cond = make_cond(cfg, 2, 3, 2)
    torch.testing.assert_close(run(model, noisy, t, cond), run(plain, noisy, t, cond),
                               atol=1e-6, rtol=0)
    assert model.denoiser.conv_in.in_channels == 3 * cfg.latent_channels
    assert model.reference_net.unet.conv_in.in_channels == cfg.latent_channels


@pytest.mark.parametrize("name", ["reference", "motion"])
def test_input_image_reaches_output_and_drop_removes_it(small, name):
    """With the new input weights made non-zero, changing the reference or the last motion frame
    changes the output, and dropping that condition makes the sample independent of it."""
    cfg, base = small
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.denoiser.conv_in.weight[:, cfg.latent_channels:].normal_(0, 0.2)
    b, f, m = 2, 3, 2
    noisy, t = make_input(cfg, b, f)
    cond = make_cond(cfg, b, f, m)
    if name == "motion":  # the last motion frame only: the input image, not the motion layers'
        changed_motion = cond.motion_latents.clone()
        changed_motion[:, -1] = -changed_motion[:, -1]
        change = lambda c: dataclasses.replace(c, motion_latents=changed_motion)  # noqa: E731
    else:
        change = CHANGES["reference"]
    base_out, changed = run(model, noisy, t, cond), run(model, noisy, t, change(cond))
    assert (base_out - changed).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3
    dropped = dataclasses.replace(cond, drop={name: torch.tensor([True, False])})
    base_out, changed = run(model, noisy, t, dropped), run(model, noisy, t, change(dropped))
    torch.testing.assert_close(changed[0], base_out[0], atol=1e-6, rtol=0)
    assert (changed[1] - base_out[1]).abs().max() > 1e-3


def test_motion_input_image_is_the_reference_without_motion_frames(small):
    """A first window (no motion frames): the "motion" input image is the reference."""
    cfg, base = small
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.denoiser.conv_in.weight[:, cfg.latent_channels:].normal_(0, 0.2)
    noisy, t = make_input(cfg, 1, 3)
    cond = make_cond(cfg, 1, 3, 0)
    images = model._input_images(cond, {"reference": torch.tensor([True]),
                                        "motion": torch.tensor([True])}, 3)
    want = torch.cat([cond.reference_latent] * 2, dim=1).repeat_interleave(3, dim=0)
    torch.testing.assert_close(images, want, atol=0, rtol=0)


def test_input_images_names_are_checked():
    with pytest.raises(ValueError, match="input_images"):
        ModelConfig.tiny(input_images=("audio",))
    with pytest.raises(ValueError, match="input_images"):
        ModelConfig.tiny(input_images=("reference", "reference"))


# --- base: SD 1.5 layout from a diffusers folder -------------------------------------------------

UNET = dict(block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8)


@pytest.fixture(scope="module")
def sd15_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = root / "diffusion" / "sd15"
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, **UNET).save_pretrained(
        folder / "unet")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                  layers_per_block=1, latent_channels=4, norm_num_groups=8).save_pretrained(
        folder / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction").save_pretrained(
        folder / "scheduler")
    return root


def small_base(root, **extra) -> ModelConfig:
    return ModelConfig.base(root, image_size=32, frames=2, motion_frames=1, temporal_heads=4,
                            emotion_dim=16, speed_dim=16, face_locator_channels=(8,),
                            expression_tokens=2, **UNET, **extra)


def test_base_loads_a_diffusers_folder(sd15_root):
    from safetensors.torch import load_file

    model = build_model(small_base(sd15_root))
    saved = load_file(sd15_root / "diffusion/sd15/unet/diffusion_pytorch_model.safetensors")
    for unet in (model.denoiser, model.reference_net.unet):
        state = unet.state_dict()
        assert set(saved) == set(state)
        for k, v in saved.items():
            assert torch.equal(state[k], v), k
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    codec = build_codec(small_base(sd15_root))
    latents = codec.encode(pixels)
    assert latents.shape == (1, 4, 16, 16) and codec.decode(latents).shape == (1, 3, 32, 32)
    assert not any(name.startswith("codec.") for name in model.state_dict())
    noisy = torch.randn(1, 2, 4, 16, 16)
    cond = Conditions(reference_latent=latents, motion_latents=latents[:, None],
                      audio=torch.randn(1, 2, 5, 512),
                      expression=torch.randn(1, 2, model.cfg.expression_dim),
                      jaw_pose=torch.zeros(1, 2, 3), emotion=torch.tensor([1]),
                      intensity=torch.ones(1), face_mask=torch.ones(1, 2, 1, 32, 32),
                      head_speed=torch.zeros(1, 2))
    assert run(model, noisy, torch.tensor([500]), cond).shape == (1, 2, 4, 16, 16)


def test_base_missing_or_mismatched_folder(sd15_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "diffusion" / "sd15")) as err:
        build_model(small_base(tmp_path))
    assert "stable-diffusion-v1-5" in str(err.value)
    with pytest.raises(ValueError, match="block_out_channels"):
        build_model(ModelConfig.base(sd15_root))  # the SD 1.5 layout vs the tiny saved UNet


@pytest.mark.parametrize("stage", [2, 3])
def test_a_bf16_frozen_reference_net_trains_the_video_stages_under_autocast(perturbed, stage):
    """Stages 2-3 with the frozen ReferenceNet cast to bf16 (what the trainer does on CUDA; CPU
    autocast here): the trained parameters stay fp32 and get gradients close to fp32's."""
    cfg, base = perturbed
    grads = []
    for half in (False, True):
        model = copy.deepcopy(base).train()
        params = model.trainable_parameters(stage)
        if half:
            model.frozen_to(torch.bfloat16, stage)
        noisy, t = make_input(cfg, 2, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            model(noisy, t, make_cond(cfg, 2, 3, 2)).float().pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
        if half:
            assert {p.dtype for p in model.reference_net.parameters()} == {torch.bfloat16}
            assert {p.dtype for p in params} == {torch.float32}
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1].float(), dim=0)
    assert cosine > 0.95, float(cosine)


def test_frozen_to_keeps_a_trained_reference_net_in_fp32(small):
    cfg, base = small
    model = copy.deepcopy(base)
    for stage in (0, 1):
        model.frozen_to(torch.bfloat16, stage)
        assert {p.dtype for p in model.reference_net.parameters()} == {torch.float32}
