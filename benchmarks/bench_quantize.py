"""quantize_dequantize against PyTorch's fake-quantize kernels, side by side in one run.

Prints, for real all-MiniLM-L6-v2 weight matrices and several bit widths, the median wall
time of quantlens (scale computation + quantize-dequantize) and of
``torch.fake_quantize_per_{tensor,channel}_affine`` (given the same scales, so torch does
less work), and the ratio. Also checks that the two agree bitwise. Run: ``make bench``.
"""

from __future__ import annotations

import time

import torch

import quantlens as ql


def median_time(fn, repeat: int = 15) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    torch.manual_seed(0)
    model = ql.load_pretrained().model
    layers = {
        "word_embeddings (30522x384)": model.embeddings.word_embeddings.weight.detach(),
        "layer0 FFN in (1536x384)": model.encoder.layer[0].intermediate.dense.weight.detach(),
        "layer0 query (384x384)": model.encoder.layer[0].attention.self.query.weight.detach(),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'matrix':28s} {'spec':26s} {'quantlens ms':>12s} {'torch ms':>9s} "
          f"{'ratio':>6s} bitwise")
    for name, w in layers.items():
        for bits in (8, 4):
            for gran in ("tensor", "channel"):
                spec = ql.QuantSpec(bits, granularity=gran)
                scale, zp = ql.qparams(w, spec)
                zp = zp.int()
                if gran == "tensor":
                    def ref(w=w, s=float(scale[0]), spec=spec):
                        return torch.fake_quantize_per_tensor_affine(w, s, 0, spec.qmin,
                                                                     spec.qmax)
                else:
                    def ref(w=w, scale=scale, zp=zp, spec=spec):
                        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0,
                                                                      spec.qmin, spec.qmax)

                def ours(w=w, spec=spec):
                    return ql.quantize_dequantize(w, spec)

                same = torch.equal(ours(), ref())
                t_ours, t_ref = median_time(ours), median_time(ref)
                print(f"{name:28s} {spec.label():26s} {1e3 * t_ours:12.2f} {1e3 * t_ref:9.2f} "
                      f"{t_ours / t_ref:6.2f} {same}")


if __name__ == "__main__":
    main()
