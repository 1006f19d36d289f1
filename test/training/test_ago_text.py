"""Text encoders (real all-MiniLM-L6-v2, random-tiny CLIP), cache, phrase bank and noise prompts."""

import pytest
import torch

from occ_audit_ros.ago.classes import load_class_config
from occ_audit_ros.ago.prompts import NoiseSampler, dictionary_words, encode_vocabulary
from occ_audit_ros.ago.text import CachedTextEncoder, ClipTextEncoder, MiniLMTextEncoder


@pytest.fixture(scope="session")
def minilm():
    return CachedTextEncoder(MiniLMTextEncoder())


def test_minilm_semantics(minilm):
    e = minilm.encode(["car", "automobile", "tree", "sedan", "oak"])
    assert e.shape == (5, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # car is nearer automobile than tree
    assert sim[2, 4] > sim[2, 3]  # tree is nearer oak than sedan


def test_cache_hits_and_file(minilm, tmp_path):
    enc = CachedTextEncoder(minilm.encoder, tmp_path / "cache.safetensors")
    a = enc.encode(["bus", "lorry", "bus"])
    assert enc.misses == 2 and torch.equal(a[0], a[2])
    enc.encode(["lorry"])
    assert enc.misses == 2
    enc.save()
    again = CachedTextEncoder(minilm.encoder, tmp_path / "cache.safetensors")
    b = again.encode(["bus", "lorry"])
    assert again.misses == 0 and torch.allclose(a[:2], b)
    with pytest.raises(ValueError, match="non-empty"):
        enc.encode(["car", ""])


def test_clip_text_encoder_matches_model(tiny_clip):
    enc = ClipTextEncoder(tiny_clip)
    e = enc.encode(["car", "tree"])
    tok = tiny_clip.tokenizer(["car"], return_tensors="pt")
    m = tiny_clip.model
    # naive path: run the text transformer, take the EOS token, project
    hidden = m.text_model(**tok).last_hidden_state
    eos = hidden[0, tok["input_ids"][0].argmax()]
    ref = torch.nn.functional.normalize(m.text_projection(eos), dim=-1)
    assert e.shape == (2, 32) and torch.allclose(e[0], ref, atol=1e-5)


def test_vocabulary_and_noise(minilm):
    cfg = load_class_config()
    bank = encode_vocabulary(minilm, cfg.phrases)
    assert bank.names == list(cfg.classes) and bank.emb.shape[0] == len(bank.token_cat)
    assert int(bank.token_cat.max()) == 16 and (bank.token_cat.diff() >= 0).all()
    words = dictionary_words()
    assert len(words) > 10000 and "tree" in words and not any(w.startswith("#") for w in words)
    sampler = NoiseSampler(minilm, words, bank.emb, threshold=0.8, seed=1)
    names, emb = sampler.sample(12)
    assert len(set(names)) == 12 and emb.shape == (12, 384)
    assert (emb @ bank.emb.T).max() <= 0.8
    pooled = NoiseSampler(minilm, words, bank.emb, threshold=0.8, seed=2, pool_size=64)
    a, ea = pooled.sample(12)
    b, _ = pooled.sample(12)
    assert a != b and set(a + b) <= set(pooled.pool[0]) and (ea @ bank.emb.T).max() <= 0.8
    strict = NoiseSampler(minilm, ["car", "automobile", "sedan"] * 1, bank.emb, threshold=0.8)
    with pytest.raises(RuntimeError, match="could not draw"):
        strict.sample(1)


def test_full_cache_hit_never_loads_model(minilm, tmp_path):
    """A machine without the MiniLM weights runs from a carried cache: hits never load the model."""
    enc = CachedTextEncoder(minilm.encoder, tmp_path / "c.safetensors")
    ref = enc.encode(["road", "fire hydrant"])
    enc.save()
    lazy = MiniLMTextEncoder(model_dir=tmp_path / "no_such_model")
    assert lazy.model is None and lazy.dim == 384 and lazy.name == minilm.name
    hit = CachedTextEncoder(lazy, tmp_path / "c.safetensors")
    assert torch.equal(hit.encode(["fire hydrant", "road"]), ref.flip(0))
    assert lazy.model is None and hit.misses == 0
    mtime = (tmp_path / "c.safetensors").stat().st_mtime_ns
    hit.save(only_if_changed=True)  # nothing new: the shared file is left alone
    assert (tmp_path / "c.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(Exception):  # a miss needs the (absent) model
        hit.encode(["bollard"])


def test_oracle_vlm_targets(minilm):
    """Simulated VLM voxel embeddings: the voxel's class texts, wrong classes at the set rate, zeros
    on free / unobserved voxels."""
    from training.ago.oracle_vlm import OracleVoxelVLM

    cfg = load_class_config()
    sem = torch.tensor([4, 16, 17, 255] * 500)
    clean = OracleVoxelVLM(minilm, cfg.phrases, noise=0.0, confusion=0.0, seed=0)
    e = clean(sem)
    assert e.shape == (2000, 384) and e.dtype == torch.float32
    assert torch.all(e[2::4] == 0) and torch.all(e[3::4] == 0)
    car = minilm.encode(clean.texts["car"])
    assert torch.allclose((e[0::4] @ car.T).max(1).values, torch.ones(500), atol=1e-5)
    assert len({tuple(r.tolist()) for r in e[0::4]}) == len(car)  # every car text gets drawn
    wrong = OracleVoxelVLM(minilm, cfg.phrases, noise=0.0, confusion=1.0, seed=0)(sem)
    assert (wrong[0::4] @ car.T).max(1).values.max() < 0.999  # never the own class
    noisy = OracleVoxelVLM(minilm, cfg.phrases, noise=1.0, confusion=0.0, seed=0)(sem)
    cos = (noisy[0::4] @ car.T).max(1).values
    assert torch.allclose(noisy[0::4].norm(dim=1), torch.ones(500), atol=1e-5) and 0.5 < cos.mean() < 0.9
    with pytest.raises(ValueError):
        OracleVoxelVLM(minilm, cfg.phrases, confusion=1.5)
