"""Static (no GPU) look at the SDIM table kernels: compile for sm_90a offline, then count the SASS
instructions of the hot loop per 64 history rows, registers and spills (ptxas -v). A proxy for
issue cost when no GPU is at hand; it measures nothing about memory or stalls.

    PYTHONPATH=. .venv/bin/python -m benchmarks.sass_static            # S=16 tau=4 d=32, fp32

Needs the ptxas / cuobjdump that ship with the triton wheel (ptxas-blackwell reads Triton 3.9's PTX).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
ARGS = {"h_ptr": "*{h}", "c_ptr": "*i64", "len_ptr": "*i64", "out_ptr": "*{h}", "L": "i32", "D": "i32", "S": "i32",
        "NB": "i32", "CHUNK": "i32", "NCH": "i32"}


def compile_sm90(fn: triton.runtime.JITFunction, consts: dict, hdt: str, num_warps: int, divisible: list[int]) -> str:
    """PTX of `fn` for sm_90a; `divisible`: argument indices specialised as 16-divisible (as at run time)."""
    sig = {k: v.format(h=hdt) for k, v in ARGS.items()} | {k: "constexpr" for k in consts}
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]


def loop_profile(ptx: str, work: Path) -> tuple[str, list[str]]:
    """(ptxas resource line, SASS instructions of the longest backward branch = the hot loop)."""
    (work / "k.ptx").write_text(ptx)
    ptxas = next(p for p in (BIN / "ptxas-blackwell", BIN / "ptxas") if p.exists())
    res = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(work / "k.ptx"), "-o", str(work / "k.cubin")],
                         capture_output=True, text=True, check=True).stderr
    used = " ".join(ln.split("info    : ")[-1] for ln in res.splitlines() if "Used" in ln or "spill" in ln)
    sass = subprocess.run([str(BIN / "cuobjdump"), "-sass", str(work / "k.cubin")], capture_output=True, text=True,
                          check=True).stdout
    ins = [(int(a, 16), t.strip()) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loop = (0, -1)
    for addr, txt in ins:
        m = re.search(r"BRA\s+0x([0-9a-f]+)", txt)
        if m and int(m.group(1), 16) < addr and addr - int(m.group(1), 16) > loop[1] - loop[0]:
            loop = (int(m.group(1), 16), addr)
    return used, [t for a, t in ins if loop[0] <= a <= loop[1]]


def report(name: str, ptx: str, num_warps: int, block_l: int, work: Path) -> None:
    """Print registers/spills and the hot loop's instruction mix, scaled to 64 history rows."""
    used, body = loop_profile(ptx, work)
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
    top = ", ".join(f"{k} {v}" for k, v in ops.most_common(10))
    print(f"{name}: {used}\n  hot loop {len(body)} instructions per warp per step = "
          f"{len(body) * num_warps * 64 // block_l} warp-instructions per 64 rows; {top}")


def main(argv: list[str] | None = None) -> None:
    """Profile the packed (default config at B=256 L=8192) and the dense table kernel."""
    from kernels.triton.configs import table_config, table_layout
    from kernels.triton.sdim import _table_all_kernel
    from kernels.triton.sdim_packed import _table_packed_kernel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--s", type=int, default=16)
    p.add_argument("--tau", type=int, default=4)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--num-warps", type=int, default=None)
    p.add_argument("--block-l", type=int, default=None)
    a = p.parse_args(argv)
    work = Path("/tmp/sass_static")
    work.mkdir(exist_ok=True)
    nb = 2**a.tau
    lay = table_layout(a.s, nb)
    cfg = table_config(256, 8192, a.d, a.s, nb, 132, num_warps=a.num_warps, block_l=a.block_l)
    div = [0, 1, 2, 3] + ([5] if a.d % 16 == 0 else []) + ([6] if a.s % 16 == 0 else [])
    consts = dict(CPW=lay.cpw, WORDS=lay.words, SB=lay.cpw * lay.words, NB_P=lay.nb_p, FIELD=lay.field,
                  BLOCK_D=cfg.block_d, BLOCK_L=cfg.block_l, PARTS=3 if a.dtype == "fp32" else 1, DOT_F32=False)
    report(f"packed {cfg}", compile_sm90(_table_packed_kernel, consts, a.dtype, cfg.num_warps, div),
           cfg.num_warps, cfg.block_l, work)
    s_p, d_p = triton.next_power_of_2(a.s), max(16, triton.next_power_of_2(a.d))
    dense = dict(S_P=s_p, NB_P=max(2, nb), D_P=d_p, UPCAST=a.dtype == "fp32", PREC="tf32x3" if a.dtype == "fp32" else "ieee",
                 SPLIT3=a.dtype == "fp32", BLOCK_L=64)
    report("dense (previous kernel, 8 warps)", compile_sm90(_table_all_kernel, dense, a.dtype, 8, [0, 1, 2, 3]), 8, 64, work)


if __name__ == "__main__":
    main()
