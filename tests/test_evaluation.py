"""The evaluation table: the best-checkpoint rule, the scores' agreement with the humans, evaluation.json,
and a whole evaluation of a short run on the random tiny model (drift images rendered once, scores cached,
a missing evaluation model named while everything else is scored)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from cartoonify.config import TINY_CLIP_MODEL, TINY_DINO_MODEL, EvalConfig, TrainConfig
from cartoonify.evaluation import choose_best, evaluate_run, score_agreement
from cartoonify.runs import RunLayout, read_evaluation
from cartoonify.sampling import choose_checkpoint

NAN = math.nan


def _row(step, n=0, mean=NAN, clip_style=NAN, style_score=NAN, heldout=NAN, checkpoint=True):
    return {"step": step, "checkpoint": f"checkpoint-{step}" if checkpoint else "", "n": n, "mean": mean,
            "ci_low": NAN, "ci_high": NAN, "alpha": NAN, "clip_style": clip_style, "style_score": style_score,
            "heldout_instance": heldout}


def test_best_follows_the_humans_once_every_checkpoint_has_enough_ratings():
    rows = [_row(0, n=8, mean=9.0, checkpoint=False), _row(500, n=8, mean=4.0, clip_style=0.9),
            _row(1000, n=9, mean=7.5, clip_style=0.1)]
    best = choose_best(rows, min_ratings=8)
    assert (best["checkpoint"], best["rule"]) == ("checkpoint-1000", "human")  # the base model is never chosen
    assert "7.50" in best["reason"]


def test_too_few_ratings_fall_back_to_the_automated_rule_with_its_overfitting_guard():
    rows = [_row(500, n=8, mean=9.0, clip_style=0.50, heldout=0.100),
            _row(1000, n=3, mean=2.0, clip_style=0.60, heldout=0.105),
            _row(1500, n=8, mean=5.0, clip_style=0.90, heldout=0.150)]  # most similar, but overfitted
    best = choose_best(rows, min_ratings=8, overfit_tolerance=0.1)
    assert (best["checkpoint"], best["rule"]) == ("checkpoint-1000", "automated")
    assert "3 of the 8" in best["reason"] and "within 10%" in best["reason"]
    # a looser guard lets the overfitted one in; no held-out loss: no guard at all
    assert choose_best(rows, min_ratings=8, overfit_tolerance=0.6)["checkpoint"] == "checkpoint-1500"
    no_loss = [{**r, "heldout_instance": NAN} for r in rows]
    assert choose_best(no_loss, min_ratings=8)["checkpoint"] == "checkpoint-1500"


def test_without_clip_the_weight_free_style_score_decides():
    rows = [_row(500, style_score=0.2), _row(1000, style_score=0.7), _row(1500, style_score=0.4)]
    best = choose_best(rows)
    assert best["checkpoint"] == "checkpoint-1000" and "style_score" in best["reason"]
    assert choose_best([_row(0, checkpoint=False)])["rule"] == "none"


def test_agreement_with_the_humans_is_spearman_over_rated_checkpoints():
    rng = np.random.default_rng(0)
    means, scores = rng.uniform(1, 10, 6), rng.uniform(0, 1, 6)
    rows = [{**_row(100 * (i + 1), n=4, mean=m, clip_style=s), "style_score": -s} for i, (m, s) in enumerate(zip(means, scores))]
    rows.append(_row(700, n=0, clip_style=5.0))  # unrated: left out
    got = score_agreement(rows)
    assert got["clip_style"] == pytest.approx(spearmanr(means, scores).statistic)
    assert got["style_score"] == pytest.approx(-got["clip_style"])
    assert math.isnan(got["clip_t"])  # never measured


# ------------------------------------------------------------------------------------------------
# a whole evaluation of a short run
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_model):
    from cartoonify.data.demo import make_style_images
    from cartoonify.training.run import run_training

    root = tmp_path_factory.mktemp("evaluation")
    make_style_images(root / "instance", n=6, size=64, seed=0)
    config = TrainConfig(
        pretrained_model=str(tiny_model), instance_dir=str(root / "instance"), class_dir=str(root / "class"),
        output_dir=str(root / "run"), resolution=64, num_class_images=4, sample_batch_size=4,
        class_inference_steps=2, holdout_images=2, train_batch_size=2, max_train_steps=4, checkpointing_steps=2,
        learning_rate=1e-3, mixed_precision="no", prior_generation_precision="fp32", num_validation_images=2,
        validation_inference_steps=2, validate_at_start=True, report_to="none", save_final_pipeline=False,
        use_8bit_adam=False,
    )
    run_training(config, progress=False)
    return config


def _eval_config(**kw):
    base = dict(clip_model=TINY_CLIP_MODEL, dino_model=TINY_DINO_MODEL, drift_images=2, bootstrap_resamples=200,
                score_batch_size=3)
    return EvalConfig(**{**base, **kw}).validate()


def test_evaluate_run_writes_the_table_and_reuses_its_work(short_run, monkeypatch):
    from cartoonify.evaluation import cache as cache_module

    run_dir = short_run.output_dir
    layout = RunLayout(run_dir)
    records = [{"rater": r, "image": f"validation/step-{s}/image-0{i}.png", "value": v, "time": ""}
               for r, bias in (("ann", 0), ("bob", 1)) for s in (0, 2, 4) for i in range(2)
               for v in [min(10, s + i + 1 + bias)]]
    result = evaluate_run(run_dir, _eval_config(), records, progress=False)
    assert [r["step"] for r in result.rows] == [0, 2, 4]
    assert [r["checkpoint"] for r in result.rows] == ["", "checkpoint-2", "checkpoint-4"]
    for row in result.rows:
        assert row["n"] == 4 and 0 <= row["style_score"] <= 1
        for key in ("clip_t", "clip_style", "dino", "drift_clip", "drift_dino", "drift_ssim", "heldout_instance"):
            assert math.isfinite(row[key]), key
    assert result.rows[0]["drift_ssim"] == pytest.approx(0, abs=1e-9)  # the base model against itself
    assert result.best["rule"] == "automated"  # 4 ratings each, fewer than min_ratings
    saved = read_evaluation(run_dir)
    assert saved["best"] == result.best and len(saved["rows"]) == 3
    assert saved["models"] == {"clip": TINY_CLIP_MODEL, "dino": TINY_DINO_MODEL}
    assert layout.scores_csv("checkpoints").is_file()
    assert choose_checkpoint(run_dir, "best") == (layout.checkpoint(result.best["step"]), result.best["checkpoint"])
    # a rerun renders no drift image and embeds nothing again
    drift_files = {p: p.stat().st_mtime_ns for p in layout.drift.rglob("*.png")}
    computed = []
    real = cache_module.EmbeddingCache.embed_files

    def counting(self, *args, **kw):
        out = real(self, *args, **kw)
        computed.append(self.computed)
        return out

    monkeypatch.setattr(cache_module.EmbeddingCache, "embed_files", counting)
    again = evaluate_run(run_dir, _eval_config(), records, progress=False)
    assert sum(computed) == 0 and computed
    assert {p: p.stat().st_mtime_ns for p in layout.drift.rglob("*.png")} == drift_files
    assert json.dumps(again.rows, default=str) == json.dumps(result.rows, default=str)


def test_enough_ratings_make_the_humans_choose(short_run):
    records = [{"rater": "ann", "image": f"validation/step-{s}/image-0{i}.png", "value": v, "time": ""}
               for s, v in ((2, 9), (4, 3)) for i in range(2)]
    result = evaluate_run(short_run.output_dir, _eval_config(min_ratings=2), records, progress=False)
    assert (result.best["checkpoint"], result.best["rule"]) == ("checkpoint-2", "human")


def test_a_missing_evaluation_model_is_named_and_the_rest_is_scored(short_run, tmp_path):
    missing = str(tmp_path / "no-such-clip")
    result = evaluate_run(short_run.output_dir, _eval_config(clip_model=missing), [], progress=False)
    assert any(missing in note and "clip" in note.lower() for note in result.notes), result.notes
    for row in result.rows:
        assert math.isnan(row["clip_t"]) and math.isnan(row["clip_style"])
        assert math.isfinite(row["dino"]) and math.isfinite(row["style_score"])
    assert "style_score" in result.best["reason"] or "clip_style" not in result.best["reason"]
