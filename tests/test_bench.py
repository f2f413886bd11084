"""gzoo.tools.bench runs end to end on a tiny folder: a smoke test of the tool, never a timing test."""

from __future__ import annotations

import json

import pytest

from gzoo.device import PRECISIONS
from gzoo.tools import bench
from tests.conftest import write_kaggle

RESULT_KEYS = {
    "decode_img_s", "decode_pil_img_s", "decode_cv2_img_s",
    "train_transform_img_s", "train_transform_cost_x_decode",
    "train_transform_gauss_noise_img_s", "train_transform_gauss_noise_cost_x_decode",
    "reference_transform_img_s", "reference_transform_cost_x_decode",
    "eval_transform_img_s", "eval_transform_cost_x_decode",
    "device_augment_img_s", "device_augment_cost_x_decode", "crop_cache_img_s", "crop_cache_cost_x_decode",
    "crop_cache_cpu_warp_img_s", "crop_cache_cpu_warp_cost_x_decode", "device_warp_img_s",
    "loader_img_s", "model_forward_img_s", "model_train_img_s",
    "predict_e2e_img_s", "predict_e2e_fraction",
    "train_e2e_img_s", "train_e2e_fraction", "train_e2e_steps_s",
    "predict_e2e_wait_fraction", "train_e2e_wait_fraction",
    "predict_e2e_fraction_per_round", "train_e2e_fraction_per_round",
    "model_forward_img_s_per_round", "predict_e2e_img_s_per_round", "model_train_img_s_per_round", "train_e2e_img_s_per_round",
}  # fmt: skip


def test_bench_writes_every_figure_with_device_and_versions(tmp_path, capsys):
    images = write_kaggle(tmp_path / "gz2", n=6) / "images_training_rev1"
    out = tmp_path / "bench" / "bench.json"
    args = ["model=test_efficientnet", "image_size=32", "batch_size=4", "workers=1", "n=10", "steps=2", "rounds=2", f"out={out}"]
    assert bench.main([f"images={images}", *args]) == 0

    report = json.loads(out.read_text())
    assert set(report) == {"device", "versions", "settings", "results"}
    assert report["device"].startswith(("cpu", "cuda"))
    assert {"torch", "timm", "albumentations", "opencv", "simplejpeg"} <= set(report["versions"])
    settings = report["settings"]
    assert settings["timm_name"] == "test_efficientnet" and settings["image_size"] == 32
    assert settings["precision"] == "32-true" and settings["n"] == 10 and len(settings["load_average"]) == 2
    assert set(report["results"]) == RESULT_KEYS
    results = report["results"]
    waits = {k: v for k, v in results.items() if k.endswith("wait_fraction")}
    assert all(0 <= v <= 1 for v in waits.values())
    for name, alone in (("predict_e2e", "model_forward"), ("train_e2e", "model_train")):  # the figure is the median of rounds
        per_round = results.pop(f"{name}_fraction_per_round")
        e2e_rates, alone_rates = results.pop(f"{name}_img_s_per_round"), results.pop(f"{alone}_img_s_per_round")
        assert len(per_round) == len(e2e_rates) == 2 and len(alone_rates) == 3 and all(r > 0 for r in per_round)
        assert per_round == pytest.approx(bench.ratios_to_neighbours(e2e_rates, alone_rates))
        assert results[f"{name}_fraction"] == pytest.approx(sum(per_round) / 2)
        assert results[f"{name}_img_s"] == max(e2e_rates) and results[f"{alone}_img_s"] == max(alone_rates)
    assert all(v > 0 for k, v in results.items() if k not in waits)
    table = capsys.readouterr().out
    for label, *_ in bench.ROWS:  # every row of the table is printed
        assert label in table
    assert "train transform + GaussNoise extra" in table and "float out" not in table


def test_a_variant_gives_its_image_size():
    assert bench.resolve_model("b3", None) == ("tf_efficientnet_b3.in1k", 300)
    assert bench.resolve_model("b0", 256) == ("tf_efficientnet_b0.in1k", 256)
    assert bench.resolve_model("test_efficientnet", 48) == ("test_efficientnet", 48)
    assert bench.resolve_model("test_efficientnet", None) == ("test_efficientnet", 224)


def test_user_mistakes_end_in_one_sentence(tmp_path, capsys):
    def error_of(*argv: str) -> str:
        assert bench.main(list(argv)) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1  # one sentence, no traceback
        return captured.err

    assert "is not a folder" in error_of(f"images={tmp_path / 'nowhere'}", "model=test_efficientnet")
    assert "holds no .jpg files" in error_of(f"images={tmp_path}", "model=test_efficientnet")
    assert "model='b99'" in error_of(f"images={tmp_path}", "model=b99")
    assert "precision" in error_of(f"images={tmp_path}", "precision=16")
    assert "images=... is required" in error_of("model=b0")
    assert "batch_size" in error_of(f"images={tmp_path}", "batch_size=0")
    assert "unknown option 'device'" in error_of(f"images={tmp_path}", "device=cpu")


def test_help_exits_0_and_lists_the_options(capsys):
    assert bench.main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in ("images", "model", "image_size", "batch_size", "workers", "n", "steps", "rounds", "threads", "precision", "channels_last", "out"):
        assert f"\n  {key}=" in text
    assert "precision=32-true" in text and all(p in text for p in PRECISIONS)
    assert "batch_size=70" in text and "workers=2" in text and "out=bench.json" in text


def test_a_steady_drift_of_the_machine_cancels_out_of_the_ratios():
    # The machine slows from 10 to 7 steps/s while e2e runs at 0.9x whatever the model alone does at that moment.
    alone = [10.0, 9.0, 8.0, 7.0]
    e2e = [0.9 * 9.5, 0.9 * 8.5, 0.9 * 7.5]
    assert bench.ratios_to_neighbours(e2e, alone) == pytest.approx([0.9, 0.9, 0.9])
    # Against the best alone figure instead, the drift would read as a slow loader (0.855 down to 0.675).
    assert max(e2e) / max(alone) < 0.86
    with pytest.raises(ValueError, match="one more alone figure"):
        bench.ratios_to_neighbours(e2e, alone[:3])
