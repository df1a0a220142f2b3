//! `comfyrs bench widen`: times filter and merge on synthetic keys of real SDXL and Z-Image
//! shapes, dense vs low-rank, and reports throughput against the bytes the operation must move
//! (each base weight read once, each result written once) as a markdown table.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use tch::{Device, Kind, Tensor};

use comfyrs_nodes::widen::kernels::{self, add_product, fresh_copy};
use comfyrs_nodes::widen::{Contribution, Product, Statistics, Widen, WidenConfig};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct WidenBenchOptions {
    /// Compute device: `cpu` or `cuda` (default: cuda when libtorch sees a GPU).
    #[arg(long, value_parser = ["cpu", "cuda"])]
    pub device: Option<String>,
    /// A short run for CPUs: two small shapes, N = 1, 2, 4 at rank 32, two repetitions.
    #[arg(long)]
    pub quick: bool,
    /// Contributor counts to time (N = 1 is the filter) [default: 1,2,4,8].
    #[arg(long, value_delimiter = ',')]
    pub contributors: Option<Vec<usize>>,
    /// LoRA ranks of each contributor [default: 16,32,64].
    #[arg(long, value_delimiter = ',')]
    pub ranks: Option<Vec<i64>>,
    /// Shapes to time, by name [default: all]: sdxl-1280, sdxl-640x2048, sdxl-conv-1280,
    /// zimage-3840, zimage-qkv.
    #[arg(long, value_delimiter = ',')]
    pub shapes: Option<Vec<String>>,
    /// Timed repetitions per case, after one warm-up [default: 5; quick: 2].
    #[arg(long)]
    pub iters: Option<usize>,
    /// Base-weight MiB per batch of keys (keys of one shape run together)
    /// [default: 1024 on CUDA, 64 on CPU].
    #[arg(long)]
    pub batch_mib: Option<f64>,
    /// Skip the dense path (it materializes every contributor's full weights).
    #[arg(long)]
    pub no_dense: bool,
    /// Also time the low-rank path's full-size stages alone (column norms, `Uᵀ·B`, the combining
    /// product), to see where the time goes.
    #[arg(long)]
    pub breakdown: bool,
}

struct KeyShape {
    name: &'static str,
    what: &'static str,
    dims: &'static [i64],
}

const SHAPES: &[KeyShape] = &[
    KeyShape { name: "sdxl-1280", what: "SDXL attn 1280x1280", dims: &[1280, 1280] },
    KeyShape { name: "sdxl-640x2048", what: "SDXL cross-attn k/v 640x2048", dims: &[640, 2048] },
    KeyShape { name: "sdxl-conv-1280", what: "SDXL conv 1280x1280x3x3", dims: &[1280, 1280, 3, 3] },
    KeyShape { name: "zimage-3840", what: "Z-Image 3840x3840", dims: &[3840, 3840] },
    KeyShape { name: "zimage-qkv", what: "Z-Image fused qkv 11520x3840", dims: &[11520, 3840] },
];

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Dense,
    LowRank,
    /// `merge_reusing`: the result overwrites the caller's fp32 backbone copy.
    LowRankInPlace,
    /// In place, with fp32 statistics.
    FastInPlace,
    /// In place, fp32 statistics, bf16x3 product.
    FastSplitInPlace,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::LowRank => "low-rank",
            Self::LowRankInPlace => "low-rank, in place",
            Self::FastInPlace => "low-rank, in place, fp32 stats",
            Self::FastSplitInPlace => "low-rank, in place, fp32 stats, bf16x3",
        }
    }

    fn widen(self, base: &Widen) -> Widen {
        let w = base.clone();
        match self {
            Self::Dense | Self::LowRank | Self::LowRankInPlace => w,
            Self::FastInPlace => w.with_statistics(Statistics::Fp32),
            Self::FastSplitInPlace => w.with_statistics(Statistics::Fp32).with_product(Product::SplitBf16),
        }
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds per call of `f`, after one warm-up call.
fn time<T>(device: Device, iters: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let mut out = f()?;
    synchronize(device);
    let start = Instant::now();
    for _ in 0..iters {
        out = f()?;
    }
    synchronize(device);
    Ok((start.elapsed().as_secs_f64() / iters as f64, out))
}

/// Device-to-device copy bandwidth (bytes read + written per second) of a `mib` MiB tensor.
fn copy_bandwidth(device: Device, mib: usize) -> anyhow::Result<f64> {
    let n = (mib * (1 << 20) / 4) as i64;
    let src = Tensor::f_ones([n], (Kind::Float, device))?;
    let mut dst = Tensor::f_empty([n], (Kind::Float, device))?;
    let (secs, _) = time(device, 10, || Ok(dst.f_copy_(&src)?))?;
    Ok(2.0 * (n * 4) as f64 / secs)
}

/// ‖x − y‖ / ‖y − base‖ (Frobenius, over the batch): the relative error of the merged delta.
fn relative_difference(x: &Tensor, y: &Tensor, base: &Tensor) -> anyhow::Result<f64> {
    let sq = |t: Tensor| -> anyhow::Result<f64> {
        Ok(t.f_to_kind(Kind::Double)?.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?)
    };
    let err = sq(x.f_sub(y)?)?;
    let scale = sq(y.f_sub(base)?)?;
    Ok((err / scale.max(f64::MIN_POSITIVE)).sqrt())
}

/// A throughput or percentage with at least two significant digits.
fn two_digits(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

pub fn run(opts: &WidenBenchOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let device = match opts.device.as_deref() {
        Some("cpu") => Device::Cpu,
        Some("cuda") => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: libtorch sees no CUDA device (is the CUDA build of libtorch on the library path?)");
            }
            Device::Cuda(0)
        }
        Some(other) => bail!("unknown device {other:?}: use cpu or cuda"),
        None => Device::cuda_if_available(),
    };
    let quick = opts.quick;
    let shape_names: Vec<String> = match &opts.shapes {
        Some(s) => s.clone(),
        None if quick => vec!["sdxl-1280".into(), "sdxl-640x2048".into()],
        None => SHAPES.iter().map(|s| s.name.to_string()).collect(),
    };
    let shapes: Vec<&KeyShape> = shape_names
        .iter()
        .map(|n| {
            SHAPES.iter().find(|s| s.name == n).with_context(|| {
                let known: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
                format!("unknown shape {n:?}; known: {}", known.join(", "))
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let counts = opts.contributors.clone().unwrap_or(if quick { vec![1, 2, 4] } else { vec![1, 2, 4, 8] });
    let ranks = opts.ranks.clone().unwrap_or(if quick { vec![32] } else { vec![16, 32, 64] });
    let iters = opts.iters.unwrap_or(if quick { 2 } else { 5 }).max(1);
    let batch_mib = opts.batch_mib.unwrap_or(if device.is_cuda() { 1024.0 } else { 64.0 });
    let mut paths = vec![Path::LowRank, Path::LowRankInPlace, Path::FastInPlace];
    let mut notes = Vec::new();
    if device.is_cuda() {
        // libtorch must support bf16 → fp32 batched products on this device; check before timing.
        let probe = Tensor::f_ones([1, 8, 8], (Kind::Float, device))?;
        match kernels::add_product_split_bf16(&probe, &probe, &probe, false) {
            Ok(_) => paths.push(Path::FastSplitInPlace),
            Err(e) => notes.push(format!("bf16x3 product unavailable on this device ({e}); not timed.")),
        }
    }
    if !opts.no_dense {
        paths.push(Path::Dense);
    }

    let _guard = tch::no_grad_guard();
    let bandwidth = copy_bandwidth(device, if device.is_cuda() { 1024 } else { 256 })?;
    let threads = tch::get_num_threads();
    writeln!(out, "## WIDEN filter/merge throughput — {device:?}, {}\n", today())?;
    writeln!(
        out,
        "Measured copy bandwidth: **{:.0} GB/s** (read + write of a {} MiB fp32 tensor){}.\n",
        bandwidth / 1e9,
        if device.is_cuda() { 1024 } else { 256 },
        if device.is_cuda() { String::new() } else { format!("; {threads} libtorch threads") }
    )?;
    writeln!(
        out,
        "Bytes moved = keys × (base read + result write), fp32 storage. Contributors are \
         `backbone + U·D` with random factors; N = 1 is the filter. \"in place\": `merge_reusing` / \
         `filter_reusing`, the result overwrites the caller's fp32 backbone copy (otherwise libtorch \
         copies the backbone before accumulating the product). Statistics in float64 unless \
         \"fp32 stats\" (`Statistics::Fp32`). `rel. diff` (‖x − y‖ / ‖y − base‖, Frobenius): low-rank \
         vs dense, the other low-rank paths vs low-rank.\n"
    )?;
    for note in &notes {
        writeln!(out, "Note: {note}\n")?;
    }
    writeln!(out, "| shape | keys | N | rank | path | ms / batch | ms / key | GB/s | % of copy | rel. diff |")?;
    writeln!(out, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")?;

    let mut breakdown = Vec::new();
    for shape in shapes {
        let numel: i64 = shape.dims.iter().product();
        let keys = ((batch_mib * (1 << 20) as f64) / (numel * 4) as f64).floor().clamp(1.0, 64.0) as i64;
        let (out_dim, k) = (shape.dims[0], numel / shape.dims[0]);
        let mut size = vec![keys];
        size.extend_from_slice(shape.dims);
        let bytes = (keys * numel * 8) as f64;
        tch::manual_seed(0);
        let base = Tensor::f_randn(size.as_slice(), (Kind::Float, device))?.f_mul_scalar(0.02)?;
        for &n in &counts {
            for &r in &ranks {
                let factors: Vec<(Tensor, Tensor)> = (0..n)
                    .map(|_| -> anyhow::Result<(Tensor, Tensor)> {
                        let up = Tensor::f_randn([keys, out_dim, r], (Kind::Float, device))?.f_mul_scalar(0.01)?;
                        let down = Tensor::f_randn([keys, r, k], (Kind::Float, device))?.f_mul_scalar(0.01)?;
                        Ok((up, down))
                    })
                    .collect::<anyhow::Result<_>>()?;
                let widen = Widen::new(WidenConfig::default(), device)?;
                let mut rows: Vec<(Path, f64, Tensor)> = Vec::new();
                for &path in &paths {
                    let w = path.widen(&widen);
                    let contributions: Vec<Contribution> = match path {
                        Path::Dense => factors
                            .iter()
                            .map(|(u, d)| -> anyhow::Result<Contribution> {
                                let w = add_product(&base.f_reshape([keys, out_dim, k])?, u, d, false)?;
                                Ok(Contribution::Weights(w.f_reshape(size.as_slice())?))
                            })
                            .collect::<anyhow::Result<_>>()?,
                        _ => factors.iter().map(|(u, d)| Contribution::low_rank(u.shallow_clone(), d.shallow_clone())).collect(),
                    };
                    let in_place = matches!(path, Path::LowRankInPlace | Path::FastInPlace | Path::FastSplitInPlace);
                    // In place, every call consumes a backbone copy: made here, outside the timing.
                    let mut copies: Vec<Tensor> = if in_place {
                        (0..=iters).map(|_| fresh_copy(&base)).collect::<Result<_, _>>()?
                    } else {
                        Vec::new()
                    };
                    let (secs, result) = time(device, iters, || {
                        Ok(match (in_place, n) {
                            (false, 1) => w.filter(&base, &contributions[0], &[])?,
                            (false, _) => w.merge(&base, &contributions, &[])?,
                            (true, 1) => w.filter_reusing(copies.pop().expect("a copy per call"), &contributions[0], &[])?,
                            (true, _) => w.merge_reusing(copies.pop().expect("a copy per call"), &contributions, &[])?,
                        })
                    })?;
                    rows.push((path, secs, result));
                }
                let find = |p: Path| rows.iter().find(|r| r.0 == p).map(|r| r.2.shallow_clone());
                if opts.breakdown {
                    let b3 = base.f_reshape([keys, out_dim, k])?;
                    let up = Tensor::f_cat(&factors.iter().map(|(u, _)| u.shallow_clone()).collect::<Vec<_>>(), 2)?;
                    let down = Tensor::f_cat(&factors.iter().map(|(_, d)| d.shallow_clone()).collect::<Vec<_>>(), 1)?;
                    let (t_norm, _) = time(device, iters, || Ok(kernels::norm2(&b3, 1, false)?))?;
                    let (t_p, _) = time(device, iters, || Ok(up.f_transpose(1, 2)?.f_bmm(&b3)?))?;
                    let (t_conv, b64) = time(device, iters, || Ok(b3.f_to_kind(Kind::Double)?))?;
                    let (t_norm64, _) = time(device, iters, || Ok(kernels::norm2(&b64, 1, false)?))?;
                    let up64 = up.f_to_kind(Kind::Double)?;
                    let (t_p64, _) = time(device, iters, || Ok(up64.f_transpose(1, 2)?.f_bmm(&b64)?))?;
                    drop(b64);
                    let (t_mm, _) = time(device, iters, || Ok(add_product(&b3, &up, &down, false)?))?;
                    // (Accumulates into one scratch copy again and again: the values drift, the work does not.)
                    let scratch = fresh_copy(&b3)?;
                    let (t_mm_in_place, _) = time(device, iters, || Ok(add_product(&scratch, &up, &down, true)?))?;
                    let (t_split, _) = if device.is_cuda() {
                        time(device, iters, || Ok(kernels::add_product_split_bf16(&b3, &up, &down, false)?))?
                    } else {
                        (f64::NAN, b3.shallow_clone())
                    };
                    let total = rows.iter().find(|r| r.0 == Path::LowRankInPlace).map(|r| r.1).unwrap_or(f64::NAN);
                    breakdown.push(format!(
                        "| {} | {keys} | {n} | {r} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                        shape.what,
                        t_norm * 1e3,
                        t_p * 1e3,
                        t_conv * 1e3,
                        t_norm64 * 1e3,
                        t_p64 * 1e3,
                        t_mm * 1e3,
                        t_mm_in_place * 1e3,
                        t_split * 1e3,
                        (total - t_conv - t_norm64 - t_p64 - t_mm_in_place) * 1e3,
                        total * 1e3
                    ));
                }
                for (path, secs, result) in &rows {
                    let against = match path {
                        Path::LowRank => find(Path::Dense),
                        Path::LowRankInPlace | Path::FastInPlace | Path::FastSplitInPlace => find(Path::LowRank),
                        Path::Dense => None,
                    };
                    let diff = match against {
                        Some(y) => Some(relative_difference(result, &y, &base)?),
                        None => None,
                    };
                    writeln!(
                        out,
                        "| {} | {keys} | {n} | {r} | {} | {:.2} | {:.3} | {} | {}% | {} |",
                        shape.what,
                        path.label(),
                        secs * 1e3,
                        secs * 1e3 / keys as f64,
                        two_digits(bytes / secs / 1e9),
                        two_digits(100.0 * bytes / secs / bandwidth),
                        diff.map(|d| format!("{d:.1e}")).unwrap_or_else(|| "—".into()),
                    )?;
                }
                out.flush()?;
            }
        }
    }
    if !breakdown.is_empty() {
        writeln!(
            out,
            "\nLow-rank stages alone, ms per batch: column norms and `Uᵀ·B` in fp32 (fast statistics) and \
             in float64 (default: the backbone's float64 copy, its norms, DGEMM); `B + U·D` fp32 with a \
             copy (out of place) and in place, bf16x3 out of place. `rest` = the default in-place total \
             minus the float64 statistics stages and the in-place product: the statistics on \
             `[N, B, K]`, ranks and scales.\n"
        )?;
        writeln!(
            out,
            "| shape | keys | N | rank | norms fp32 | Uᵀ·B fp32 | to f64 | norms f64 | Uᵀ·B f64 | B + U·D copy | B + U·D in place | B + U·D bf16x3 | rest | in-place total |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for line in breakdown {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
