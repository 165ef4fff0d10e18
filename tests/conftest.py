"""Test-wide settings: never touch the network, keep caches inside the test run."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PIPELINE_LIB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "assets" / "astronaut.png"


def pytest_configure(config):
    # One cache per test session, shared by its workers, so converted weights are made once.
    cache = Path(config.rootpath) / ".pytest_cache" / "pipeline_lib_cache"
    os.environ.setdefault("PIPELINE_LIB_CACHE", str(cache))


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photograph (public-domain NASA portrait), RGB 512×512."""
    return Image.open(PHOTO).convert("RGB")


@pytest.fixture(scope="session")
def small_photo(photo) -> Image.Image:
    """A 48×40 crop with face detail: small enough for x4plus on 2 CPU cores."""
    return photo.crop((180, 90, 228, 130))


# The tiny random diffusers pipelines, built once per session and shared by every test file.
@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-pipelines")


@pytest.fixture(scope="session")
def sd_dir(tiny_root):
    from pipeline_lib.testing import tiny_sd_pipeline_dir

    return str(tiny_sd_pipeline_dir(tiny_root))


@pytest.fixture(scope="session")
def sdxl_dir(tiny_root):
    from pipeline_lib.testing import tiny_sdxl_pipeline_dir

    return str(tiny_sdxl_pipeline_dir(tiny_root))


def psnr(a, b, peak: float = 255.0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


# ------------------------------------------------------------------ the fast subset
# `python -m pytest -m "not slow"`: everyday runs without the heaviest tests (README, "Tests").
# Listed here, by file and test name, rather than decorated in each file, so the whole choice is
# visible in one place; tests/test_fast_subset.py checks that every entry still names a test.
SLOW_TESTS: set[str] = {
    "test_batch.py::test_failed_job_is_reported_and_others_run",
    "test_batch.py::test_two_processes_each_job_once_then_resume",
    "test_cli.py::test_folder_in_folder_out_skip_and_failures",
    "test_cli.py::test_single_file_output_and_size",
    "test_compare.py::test_compare_models_same_seed_on_tiny_presets",
    "test_compare.py::test_compare_upscalers_table_and_images",
    "test_compare.py::test_compare_refine_gan_alone_vs_gan_plus_refine",
    "test_convert.py::test_converted_weights_match_ncnn_within_one_level",
    "test_diffusion_upscalers.py::test_alpha_is_resized_not_sampled",
    "test_diffusion_upscalers.py::test_bad_options",
    "test_diffusion_upscalers.py::test_deterministic_by_seed_and_seeds_differ",
    "test_diffusion_upscalers.py::test_latent_handoff_skips_decode",
    "test_diffusion_upscalers.py::test_odd_sizes_padded_and_cropped",
    "test_diffusion_upscalers.py::test_run_options_not_in_load_cache_key",
    "test_diffusion_upscalers.py::test_tiled_x4_close_to_untiled",
    "test_generate.py::test_batch_uses_consecutive_seeds",
    "test_generate.py::test_cache_reuse_and_switching",
    "test_generate.py::test_cpu_bf16_generation_where_native",
    "test_generate.py::test_default_size_and_one_side",
    "test_generate.py::test_long_prompt_chunked_not_truncated",
    "test_generate.py::test_metadata_round_trip_recreates_pixels",
    "test_generate.py::test_negative_prompt_changes_the_image",
    "test_generate.py::test_on_progress_reports_every_denoising_step",
    "test_generate.py::test_registered_preset_defaults_and_refiner",
    "test_generate.py::test_same_seed_same_pixels_and_seed_reported",
    "test_generate.py::test_scheduler_switch_and_back",
    "test_generate.py::test_sdxl_tiny_pipeline",
    "test_generate.py::test_single_file_matches_folder",
    "test_generate.py::test_size_rounding_warns",
    "test_generate.py::test_text_to_image_reaches_exact_target",
    "test_generate.py::test_text_to_image_with_x4plus",
    "test_generate.py::test_xformers_request_falls_back_to_sdpa_with_same_pixels",
    "test_generate_presets.py::test_cli_generate_never_overwrites",
    "test_multi_gpu.py::test_generate_split_matches_one_device_seeds_and_order",
    "test_multi_gpu.py::test_text_to_image_pipelined_equals_sequential",
    "test_multi_gpu.py::test_text_to_image_pipelined_refine_runs_on_the_second_slot",
    "test_generate_speed.py::test_each_option_set_is_its_own_cached_pipeline",
    "test_generate_speed.py::test_optimised_path_matches_plain",
    "test_hardening.py::test_concurrent_processes_fill_the_converted_cache_safely",
    "test_hardening.py::test_corpus_through_cli",
    "test_hardening.py::test_killed_cli_leaves_no_partial_files_and_rerun_resumes",
    "test_hardening_generate.py::test_batch_reports_oom_and_runs_the_next_job",
    "test_hardening_generate.py::test_generation_oom_is_typed_and_names_the_settings",
    "test_hardening_generate.py::test_killed_batch_leaves_no_partial_files_and_rerun_does_each_job_once",
    "test_hardening_generate.py::test_killed_generate_cli_leaves_only_complete_images",
    "test_hardening_generate.py::test_metadata_round_trip_with_unicode_newlines_commas",
    "test_hardening_generate.py::test_rerun_replaces_images_left_by_a_job_killed_between_its_images",
    "test_hardening_generate.py::test_truncated_video_through_the_cli",
    "test_heap.py::test_importing_pipeline_lib_gives_torch_huge_pages",
    "test_media.py::test_cli_folder_with_animations_and_video",
    "test_ncnn_backend.py::test_ncnn_cpu_matches_torch",
    "test_server.py::test_live_server_concurrency_errors_and_clean_shutdown",
    "test_server_photoreal.py::test_embedding_by_name_changes_the_image_only_with_its_token",
    "test_server_photoreal.py::test_refine_strength_on_generations",
    "test_server_photoreal.py::test_refine_strength_on_upscale",
    "test_tiling.py::test_oom_backoff_halves_tiles_and_matches",
    "test_tiling.py::test_output_size_is_always_exact",
    "test_tiling.py::test_rrdbnet_tiled_on_a_photo",
    "test_tiling.py::test_tiled_matches_untiled_on_a_photo",
    "test_torch_fast_paths.py::test_batched_tiles_match_one_by_one",
    "test_torch_fast_paths.py::test_compiled_model_gives_the_same_image",
    "test_torch_fast_paths.py::test_cpu_bf16_only_where_native",
    "test_torch_fast_paths.py::test_fp32_trunk_rewrite_computes_spandrels_function",
    "test_torch_fast_paths.py::test_native_bf16_cpu_defaults_to_bf16_and_says_how_to_get_fp32",
    "test_torch_fast_paths.py::test_nearest_upconv_rewrite_computes_the_same_function",
    "test_torch_fast_paths.py::test_run_whole_gives_the_general_paths_bytes",
    "test_torch_fast_paths.py::test_run_whole_only_for_untiled_one_pass_8bit_rgb",
    "test_torch_fast_paths.py::test_x4plus_bf16_on_cpu_keeps_closer_to_fp32_than_whole_bf16",
    "test_torch_fast_paths.py::test_x4plus_on_cpu_matches_spandrel",
    "test_upscale.py::test_any_scale_gives_exact_size",
    "test_upscale.py::test_odd_size_through_rrdbnet_minimum_size",
    "test_upscale.py::test_progress_bar_reaches_total",
    "test_widgets.py::test_bad_input_shows_message_and_app_keeps_working",
    "test_widgets.py::test_generate_upscale_save",
    "test_widgets.py::test_hires_and_refine_controls",
    "test_widgets.py::test_notebook_check_passes_on_the_app_and_raises_naming_the_failure",
    "test_widgets.py::test_lora_ticked_in_the_picker_reaches_generate",
    "test_widgets_controller.py::test_lora_picked_in_the_app_reaches_generate",
    "test_widgets_controller.py::test_refine_after_upscale_shows_gan_and_refined_with_pixel_crops",
    "test_widgets_controller.py::test_hires_fix_doubles_the_size_and_bad_strength_shows_the_library_message",
    "test_widgets_controller.py::test_bad_refine_strength_is_refused_before_upscaling",
    "test_widgets.py::test_unexpected_error_is_one_line_with_folded_details",
    "test_upscale_passes.py::test_x8_model_to_16x_runs_once_and_reports_the_plan",
    "test_broken_cv2.py::test_upscale_with_a_half_deleted_cv2",
    "test_outputs_meta.py::test_converted_weights_in_the_cache_are_world_readable",
    "test_offline_hub.py::test_unreachable_hub_is_one_clear_error",
    "test_tiling.py::test_default_overlap_keeps_128px_tiles_seam_free_on_a_texture",
    "test_openvino_backend.py::test_damaged_ir_is_exported_again",
    "test_a1111_interop.py::test_the_models_own_scheduler_is_named",
}
#: whole files: subprocesses, live servers, a browser
SLOW_FILES: set[str] = {"test_readme.py", "test_install_cell.py", "test_app_in_browser.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', None) or item.name}"
        if item.path.suffix == ".ipynb" or name in SLOW_TESTS or item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
