"""python -m helpers bench: runs on the CPU in well under a minute and reports every lever it was given."""
import json

import pytest
import torch

from helpers import bench
from helpers.__main__ import main


def test_bench_quick(tmp_path, capsys, monkeypatch):
    asked = []

    def generate(network, schedule, count, sampler, **options):  # what sampling asked, beside the row's words
        asked.append(options["images_per_call"])
        # drawn in 1 step, not the row's 50: without bf16 arithmetic (AVX2 only) a bf16 NCHW call on one
        # image takes seconds (PyTorch's reference convolution)
        return bench_generate(network, schedule, count, sampler.replace(steps=1), **options)

    bench_generate = bench.generate
    monkeypatch.setattr(bench, "generate", generate)
    assert main(["bench", "--quick", "--quiet", "--model", "seed-unet", "--memory-format", "contiguous",
                 "channels_last", "--sample-precision", "fp32", "bf16", "--sample-n", "2", "--sample-batch", "100",
                 "--images-per-call", "1",
                 "--profile", "--json", str(tmp_path / "bench.json")]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    training = report["training"]
    assert [(row["name"], row["memory_format"]) for row in training] == \
        [("original", "contiguous"), ("seed-unet", "contiguous"), ("seed-unet", "channels_last")]
    assert training[0]["batch_size"] == 9 and training[0]["ratio_to_original"] == 1.0
    assert all(row["images_per_second"] > 0 and row["compile"] == "eager" for row in training)
    assert training[1]["parameters"] == 1_141_476 and training[1]["batch_size"] == 8
    # train's own step: fp32 on a CPU, and a profile of what it calls
    assert training[1]["precision"] == "fp32" and training[1]["profile"]["operators_per_call"] > 100
    assert {"aten::convolution_backward"} & {t["name"] for t in training[1]["profile"]["top"]}
    sampling = report["sampling"]
    assert [(row["precision"], row["memory_format"]) for row in sampling] == \
        [("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last")]
    assert all(row["images"] == 2 and row["images_per_call"] == 1 and row["seconds"] > 0 for row in sampling)
    assert set(asked) == {1}
    out = capsys.readouterr().out
    # the batch that ran: 2 images, though --sample-batch allowed 100
    assert "(a) original" in out and "DDIM-50, eta 1, batch 2 (1 per network call)" in out


def test_bench_prints_a_cpu_sampling_rate_below_one_image_a_second():
    row = {"images": 16, "sampler": "DDIM-50, eta 1", "batch_size": 16, "images_per_call": 8, "precision": "fp32",
           "memory_format": "contiguous", "compile": "eager", "seconds": 50.0, "compile_seconds": 0.0}
    report = {"device": "cpu", "torch": "2", "quick": False, "training": [],
              "sampling": [dict(row, images_per_second=0.32), dict(row, images_per_second=2046.7)]}
    lines = bench.format_bench(report).splitlines()
    assert lines[2].endswith("eager: 50.00 s (0.32 img/s; compile 0 s)")
    assert lines[3].endswith("eager: 50.00 s (2047 img/s; compile 0 s)")


def test_bench_refuses_a_bad_lever(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--compile", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--batch-size", "0"])
    assert "expected a positive whole number, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--images-per-call", "0"])
    assert "argument --images-per-call: expected a positive whole number, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        bench.sampling_row(torch.nn.Conv2d(1, 1, 1), None, torch.device("cpu"), 1, 1, "int8")


def test_the_padding_lever_pads_with_f_pad_inside_its_block_only():
    from torch.profiler import ProfilerActivity, profile

    from helpers.unet import PeriodicConv2d

    torch.manual_seed(0)
    # weights and input in NHWC, as sampling lays out a network for bf16 or --fast on a CPU: the
    # convolution then runs NHWC after either padding (NCHW weights would run it NCHW after F.pad,
    # whose rounding differs on some CPUs, e.g. an EPYC with AVX2 only)
    conv = PeriodicConv2d(4, 4, 3, padding=1, padding_mode="circular").to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)

    def operators(padding_name):
        with bench.padding(padding_name), profile(activities=[ProfilerActivity.CPU]) as prof:
            y = conv(x)
        return {event.key for event in prof.key_averages()}, y

    wrapped, ours = operators("wrap")
    padded, torchs = operators("torch")
    assert "aten::_pad_circular" in padded and "aten::_pad_circular" not in wrapped
    assert torch.equal(ours, torchs)
    assert PeriodicConv2d._conv_forward is not torch.nn.Conv2d._conv_forward  # restored after the block
    with pytest.raises(ValueError, match="unknown padding 'zeros'; expected one of wrap, torch"):
        with bench.padding("zeros"):
            pass


def test_alternated_seconds_takes_turns_and_gives_each_candidates_median():
    calls = []
    seconds = {"a": iter([3.0, 1.0, 2.0]), "b": iter([10.0, 30.0, 20.0])}

    def run(name: str) -> float:
        calls.append(name)
        return next(seconds[name])

    times, medians = bench.alternated_seconds({"a": lambda: run("a"), "b": lambda: run("b")}, 3)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # in turn, not all of a then all of b
    assert times == {"a": [3.0, 1.0, 2.0], "b": [10.0, 30.0, 20.0]} and medians == {"a": 2.0, "b": 20.0}


def test_a_training_row_times_the_compact_unet_the_cpu_profile_trains():
    row = bench.training_row("compact", torch.device("cpu"), 2, steps=1, warmup=0, repeats=1)
    assert (row["name"], row["model"], row["parameters"], row["batch_size"]) == ("compact", "unet", 686_769, 2)
    assert row["images_per_second"] > 0 and 0.5 < row["gflop_per_image"] < 1.0  # the default UNet's: 4.5
    with pytest.raises(ValueError, match="unknown model 'tiny'; expected one of unet, seed-unet, compact"):
        bench.training_row("tiny", torch.device("cpu"), 2)


# Kernel names as torch.profiler reports them on CUDA (demangled, shortened where they repeat)
COPY_KERNEL = ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
               "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::"
               "operator()() const::{lambda(c10::BFloat16)#1}>(at::TensorIteratorBase&, ...)::{lambda(int)#1}>"
               "(int, ...)")
ADD_KERNEL = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
              "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)")
MUL_KERNEL = ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
              "BinaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float> > >"
              "(at::TensorIteratorBase&, ...)::{lambda(int)#1}>(int, ...)")
SUM_KERNEL = ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<"
              "float, at::native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, "
              "float)#1}>, unsigned int, float, 4, 4> >(...)")


def test_kernel_labels_keep_the_operation_that_the_first_90_characters_cut_off():
    # the summary used to keep a name's first 90 characters: all of the copy kernel's were its wrapper
    assert "direct_copy" not in COPY_KERNEL[:90]
    assert bench.kernel_label(COPY_KERNEL) == "elementwise_kernel (direct_copy_kernel_cuda)"
    assert bench.kernel_label(ADD_KERNEL) == "vectorized_elementwise_kernel (CUDAFunctor_add)"
    assert bench.kernel_label(MUL_KERNEL) == "elementwise_kernel (MulFunctor)"
    assert bench.kernel_label(SUM_KERNEL) == "reduce_kernel (sum_functor)"
    # other kernels and CPU operators: their names, cut to 90 characters
    wgrad = ("sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x64x64_"
             "warpgroupsize1x1x1")
    assert bench.kernel_label(wgrad) == wgrad[:90]
    assert bench.kernel_label("triton_poi_fused_copy_silu_slice_12") == "triton_poi_fused_copy_silu_slice_12"
    assert bench.kernel_label("aten::convolution_backward") == "aten::convolution_backward"


def test_kernel_sources_count_the_operators_that_launched_each_kernel():
    from torch.autograd.profiler_util import FunctionEvent

    def operator(name: str, kernels: list[str], index: int) -> FunctionEvent:
        event = FunctionEvent(id=index, name=name, thread=0, start_us=index, end_us=index + 1)
        for kernel in kernels:
            event.append_kernel(kernel, 0, 5.0)
        return event

    events = [operator("aten::copy_", [COPY_KERNEL], 0), operator("aten::copy_", [COPY_KERNEL], 1),
              operator("aten::contiguous", [], 2), operator("aten::add_", [ADD_KERNEL, COPY_KERNEL], 3)]
    sources = bench.kernel_sources(events)
    assert sources[COPY_KERNEL] == {"aten::copy_": 2, "aten::add_": 1}
    assert sources[ADD_KERNEL] == {"aten::add_": 1}
    assert set(sources) == {COPY_KERNEL, ADD_KERNEL}
    line = bench._profile_line({"kernels_per_call": 1551.0, "gpu_busy_share": 0.98, "top": [
        {"name": COPY_KERNEL[:300], "label": bench.kernel_label(COPY_KERNEL), "share": 0.13, "count_per_call": 78.0,
         "launched_by": [{"operator": "aten::copy_", "count_per_call": 78.0}]}]})
    assert line == ("1551 kernels per call, GPU busy 98%; top: elementwise_kernel (direct_copy_kernel_cuda) "
                    "from aten::copy_ 13%")
