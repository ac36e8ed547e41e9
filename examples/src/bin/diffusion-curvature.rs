//! `diffusion-curvature`: the diffusion curvature of point clouds sampled from a sphere, a
//! plane, a saddle and a torus (or of the user's points), with the module built from
//! examples/kf/curvature.kf. Nothing N x N is formed: the walk's top eigenpairs come from
//! Lanczos on kernel products, and its return probabilities from one reduction with an
//! indicator kernel. Links keops-runtime only.

use clap::Parser;
use keops_examples::plot::{diverging, project, scatter, Image};
use keops_examples::{array_of, load_module, read_points, write_npy, SplitMix};
use keops_runtime::linalg::{
    lanczos, EigOptions, KernelOperator, Normalization, Progress, Scaled, Timed,
};
use keops_runtime::{ArrayRef, DType, HostArray, Kernel};
use std::f64::consts::PI;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Diffusion curvature (the "laziness" of a random walk): for each point x_i, the probability
/// that a t-step walk on the point cloud started at x_i ends within distance r of x_i, minus
/// the same probability on a flat disc sampled at the same density. Positive where the
/// surface is curved like a sphere, negative where it is curved like a saddle.
///
/// The walk is P = D_a^-1 K_a, K_a = D^-1 K D^-1 (alpha = 1: the sampling density removed),
/// K_ij = exp(-|x_i - x_j|^2 / eps). From the top k eigenpairs (lambda, u) of the symmetric
/// D_a^-1/2 K_a D_a^-1/2 (Lanczos, each product a kernel reduction over unordered pairs),
/// P^t[i, j] = sum_k lambda_k^t psi_k(i) d_j psi_k(j) with psi = D_a^-1/2 u, and the laziness of
/// x_i is sum over |x_i - x_j| < r of P^t[i, j]: the kernel ball_return.
///
///     keopsc build examples/kf/curvature.kf --same y=x -o curvature.kmod
///     diffusion-curvature curvature.kmod --n 100000 --out plots/
///     diffusion-curvature curvature.kmod --points X.npy -o curvature.npy   (the user's (N, 3) cloud)
///
/// Without --points: four surfaces of area 4 pi (the unit sphere; a disc of radius 2; the
/// saddle z = (x^2 - y^2) / 2 over a disc of radius 1.63; a torus of tube radius 0.4 around a
/// circle of radius 1 / (0.4 pi)), N points each, uniform in area. It prints the mean
/// curvature where the sign is known (the whole sphere, the centres of the disc and the
/// saddle, the torus's inner and outer rings), checks the sign pattern (exit status 1 when it
/// is wrong) and writes diffusion_curvature.png (the clouds coloured by curvature, blue
/// negative, red positive) and diffusion_map.png (the torus's diffusion-map coordinates
/// lambda^t psi_2, lambda^t psi_3, coloured the same way) into --out.
#[derive(Parser)]
#[command(name = "diffusion-curvature", verbatim_doc_comment)]
struct Args {
    /// The module directory written by `keopsc build examples/kf/curvature.kf --same y=x`.
    module: PathBuf,
    /// Points per surface.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// The kernel's width: K_ij = exp(-|x_i - x_j|^2 / eps).
    #[arg(long, default_value_t = 0.05)]
    eps: f64,
    /// Steps of the walk.
    #[arg(long, default_value_t = 16)]
    t: i32,
    /// The ball's radius r.
    #[arg(long, default_value_t = 0.6)]
    radius: f64,
    /// Eigenpairs kept (at most the 20 of ball_return in curvature.kf).
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Lanczos's tolerance (relative to the largest eigenvalue, 1).
    #[arg(long, default_value_t = 1e-6)]
    tol: f64,
    /// f32 or f64: the dtype of the points and of the kernel products.
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The folder for the plots.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The user's points, an (N, 3) .npy array, instead of the four surfaces; the laziness
    /// of each point is written to -o (no flat reference: compare it with a flat cloud's).
    #[arg(long, value_name = "X.npy")]
    points: Option<PathBuf>,
    /// With --points: where to write the laziness, (N,) in the points' dtype.
    #[arg(short, long, value_name = "OUT.npy", requires = "points")]
    output: Option<PathBuf>,
}

const BALL_WIDTH: usize = 20;
const TUBE_RADIUS: f64 = 0.4;
const DISC_RADIUS: f64 = 2.0;
/// The flat reference is taken where the walk and the ball stay clear of the disc's rim,
/// whose reflections make the walk lazier.
const DISC_INTERIOR: f64 = 0.8;

fn torus_radius() -> f64 {
    // Area 4 pi^2 R r = 4 pi.
    1.0 / (PI * TUBE_RADIUS)
}

fn saddle_radius() -> f64 {
    // The graph of (x^2 - y^2) / 2 over a disc of radius rho has area
    // 2 pi / 3 ((1 + rho^2)^(3/2) - 1) = 4 pi.
    (7.0f64.powf(2.0 / 3.0) - 1.0).sqrt()
}

fn normal(rng: &mut SplitMix) -> f64 {
    let (u, v) = (rng.next_f64().max(f64::MIN_POSITIVE), rng.next_f64());
    (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
}

fn in_disc(rng: &mut SplitMix, radius: f64) -> (f64, f64) {
    let (r, a) = (radius * rng.next_f64().sqrt(), 2.0 * PI * rng.next_f64());
    (r * a.cos(), r * a.sin())
}

fn sphere(rng: &mut SplitMix, n: usize) -> Vec<[f64; 3]> {
    (0..n)
        .map(|_| {
            let v = [normal(rng), normal(rng), normal(rng)];
            let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            v.map(|c| c / norm)
        })
        .collect()
}

fn plane(rng: &mut SplitMix, n: usize) -> Vec<[f64; 3]> {
    (0..n)
        .map(|_| {
            let (x, y) = in_disc(rng, DISC_RADIUS);
            [x, y, 0.0]
        })
        .collect()
}

/// Uniform in area: points of the disc kept with probability proportional to the area
/// element sqrt(1 + x^2 + y^2).
fn saddle(rng: &mut SplitMix, n: usize) -> Vec<[f64; 3]> {
    let rho = saddle_radius();
    let largest = (1.0 + rho * rho).sqrt();
    let mut points = Vec::with_capacity(n);
    while points.len() < n {
        let (x, y) = in_disc(rng, rho);
        if rng.next_f64() * largest < (1.0 + x * x + y * y).sqrt() {
            points.push([x, y, (x * x - y * y) / 2.0]);
        }
    }
    points
}

/// Uniform in area: angles kept with probability proportional to the area element
/// R + r cos(phi) (uniform angles would crowd the inner ring).
fn torus(rng: &mut SplitMix, n: usize) -> Vec<[f64; 3]> {
    let (big, small) = (torus_radius(), TUBE_RADIUS);
    let mut points = Vec::with_capacity(n);
    while points.len() < n {
        let (theta, phi) = (2.0 * PI * rng.next_f64(), 2.0 * PI * rng.next_f64());
        if rng.next_f64() * (big + small) < big + small * phi.cos() {
            let ring = big + small * phi.cos();
            points.push([ring * theta.cos(), ring * theta.sin(), small * phi.sin()]);
        }
    }
    points
}

fn axis_distance(p: &[f64; 3]) -> f64 {
    (p[0] * p[0] + p[1] * p[1]).sqrt()
}

/// What the walk gives for one cloud.
struct Walk {
    laziness: Vec<f64>,
    /// The diffusion-map coordinates lambda^t psi of the first nontrivial eigenvectors.
    map: Vec<[f64; 2]>,
    products: u64,
    eigen_summary: String,
    seconds: f64,
}

fn walk(args: &Args, gaussian: &Kernel, ball: &Kernel, x: &HostArray) -> Result<Walk, String> {
    let start = Instant::now();
    let n = x.shape[0];
    let dtype = x.dtype();
    let op = KernelOperator::new(
        gaussian.clone(),
        "b",
        vec![
            ("x".into(), x.clone()),
            ("y".into(), x.clone()),
            ("g".into(), array_of(dtype, vec![1], vec![1.0 / args.eps])),
        ],
    )
    .map_err(|e| e.to_string())?;
    if !op.pairs_once() {
        eprintln!("note: the module has no symmetric pass (build it with --same y=x): products walk every pair twice");
    }
    let steps = [Normalization::Alpha(1.0), Normalization::Symmetric];
    let symmetric = Scaled::normalized(Timed::new(op), &steps).map_err(|e| e.to_string())?;
    let options = EigOptions {
        k: args.k,
        tol: args.tol,
        ..EigOptions::default()
    };
    // Progress on a terminal only, one line rewritten in place.
    let terminal = std::io::stderr().is_terminal();
    let mut report = |p: &Progress| {
        if terminal {
            eprint!("\r  {p}\x1b[K");
        }
    };
    let eig = lanczos(&symmetric, &options, &mut report).map_err(|e| e.to_string())?;
    if terminal {
        eprint!("\r\x1b[K");
    }
    if !eig.converged {
        eprintln!("warning: {eig}");
    }
    let k = eig.k;
    let psi = symmetric
        .random_walk_eigenvectors(&eig.vectors, k)
        .map_err(|e| e.to_string())?;
    let degrees = symmetric
        .symmetric_degrees()
        .ok_or("the last normalisation step is sym")?;
    // a = psi diag(lambda^t), b = D psi, padded to the kernel's 20 columns.
    let mut a = vec![0.0; n * BALL_WIDTH];
    let mut b = vec![0.0; n * BALL_WIDTH];
    for i in 0..n {
        for c in 0..k {
            a[i * BALL_WIDTH + c] = psi[i * k + c] * eig.values[c].powi(args.t);
            b[i * BALL_WIDTH + c] = degrees[i] * psi[i * k + c];
        }
    }
    let (a, b) = (
        array_of(dtype, vec![n, BALL_WIDTH], a),
        array_of(dtype, vec![n, BALL_WIDTH], b),
    );
    let r2 = array_of(dtype, vec![1], vec![args.radius * args.radius]);
    let inputs: [ArrayRef; 5] = [x.view(), x.view(), a.view(), b.view(), r2.view()];
    let laziness = ball
        .call_symmetric(&inputs)
        .map_err(|e| e.to_string())?
        .to_f64();
    let coordinate = |i: usize, c: usize| {
        if c < k {
            psi[i * k + c] * eig.values[c].powi(args.t)
        } else {
            0.0
        }
    };
    let map = (0..n)
        .map(|i| [coordinate(i, 1), coordinate(i, 2)])
        .collect();
    let shown = eig.values.iter().skip(1);
    let eigen_summary = format!(
        "lambda_2..{} = {:.4}..{:.4} ({} restarts)",
        k,
        shown.clone().next().copied().unwrap_or(f64::NAN),
        shown.last().copied().unwrap_or(f64::NAN),
        eig.restarts
    );
    Ok(Walk {
        laziness,
        map,
        products: symmetric.op.applies() + 1,
        eigen_summary,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn points_array(points: &[[f64; 3]], dtype: DType) -> HostArray {
    array_of(
        dtype,
        vec![points.len(), 3],
        points.iter().flatten().copied().collect(),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn mean_over(values: &[f64], mask: impl Fn(usize) -> bool) -> (f64, usize) {
    let (sum, count) = values
        .iter()
        .enumerate()
        .filter(|(i, _)| mask(*i))
        .fold((0.0, 0usize), |(s, c), (_, v)| (s + v, c + 1));
    (sum / count.max(1) as f64, count)
}

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse();
    let dtype = checked_dtype(&args)?;
    let module = load_module(&args.module)?;
    let kernel = |name: &str| module.kernel(name).map_err(|e| e.to_string());
    let (gaussian, ball) = (kernel("gaussian_product")?, kernel("ball_return")?);
    if let Some(path) = &args.points {
        return run_on_points(&args, &gaussian, &ball, path);
    }
    println!(
        "diffusion curvature: N = {} per surface, eps = {}, t = {}, ball radius {}, k = {} eigenpairs, {}",
        args.n, args.eps, args.t, args.radius, args.k, dtype
    );
    let start = Instant::now();
    let surveyed = survey_surfaces(&args, dtype, &gaussian, &ball)?;
    println!(
        "all four: {:.1} s, {} kernel passes of {} x {} pairs",
        start.elapsed().as_secs_f64(),
        surveyed.passes,
        args.n,
        args.n
    );
    let ok = judge_signs(&surveyed.judged);
    let limit = surveyed.judged.iter().fold(0.0f64, |m, j| m.max(j.1.abs())) * 1.3;
    plot(&args.out, &surveyed.panels, &surveyed.torus_map, limit)?;
    println!("sign pattern: {}", if ok { "ok" } else { "WRONG" });
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// The dtype asked, once the other options are checked.
fn checked_dtype(args: &Args) -> Result<DType, String> {
    let dtype = match args.dtype.as_str() {
        "f32" | "float32" => DType::F32,
        "f64" | "float64" => DType::F64,
        other => return Err(format!("--dtype `{other}`: expected f32 or f64")),
    };
    if args.k == 0 || args.k > BALL_WIDTH {
        return Err(format!(
            "--k {}: ball_return in curvature.kf takes 1 to {BALL_WIDTH} eigenpairs (edit its Vi(20) and Vj(20) for more)",
            args.k
        ));
    }
    if !(args.eps > 0.0 && args.radius > 0.0 && args.t >= 0) {
        return Err("--eps and --radius must be positive, --t at least 0".into());
    }
    Ok(dtype)
}

/// `--points`: the laziness of the user's cloud, printed and written to `-o`.
fn run_on_points(args: &Args, gaussian: &Kernel, ball: &Kernel, path: &Path) -> Result<(), String> {
    let x = read_points(path, "--points")?;
    let walk = walk(args, gaussian, ball, &x)?;
    println!(
        "N = {}: {:.2} s, {} kernel passes; {}; laziness {:.4} on average",
        x.shape[0],
        walk.seconds,
        walk.products,
        walk.eigen_summary,
        walk.laziness.iter().sum::<f64>() / walk.laziness.len().max(1) as f64
    );
    if let Some(out) = &args.output {
        let n = walk.laziness.len();
        write_npy(&array_of(x.dtype(), vec![n], walk.laziness), out, "-o")?;
    }
    Ok(())
}

/// The four surfaces' curvatures: what the plot shows and the regions whose sign is judged.
struct Survey {
    /// A region, its mean curvature, and the sign expected (0: about 0).
    judged: Vec<(String, f64, i32)>,
    panels: Vec<Panel>,
    /// The torus's diffusion-map coordinates and curvature.
    torus_map: Vec<([f64; 2], f64)>,
    passes: u64,
}

/// Samples each surface, computes its curvature relative to the plane's, and prints it by
/// region.
fn survey_surfaces(
    args: &Args,
    dtype: DType,
    gaussian: &Kernel,
    ball: &Kernel,
) -> Result<Survey, String> {
    type Sampler = fn(&mut SplitMix, usize) -> Vec<[f64; 3]>;
    // name, sampler, the view's elevation, and the regions where the sign is judged.
    type Region = (&'static str, fn(&[f64; 3]) -> bool, i32);
    let inner = |p: &[f64; 3]| axis_distance(p) < torus_radius() - TUBE_RADIUS / 2.0;
    let outer = |p: &[f64; 3]| axis_distance(p) > torus_radius() + TUBE_RADIUS / 2.0;
    let centre = |p: &[f64; 3]| axis_distance(p) < 0.3;
    let surfaces: [(&str, Sampler, f64, Vec<Region>); 4] = [
        ("plane", plane, 35.0, vec![("centre", centre, 0)]),
        ("sphere", sphere, 20.0, vec![("all", |_| true, 1)]),
        ("saddle", saddle, 30.0, vec![("centre", centre, -1)]),
        (
            "torus",
            torus,
            55.0,
            vec![("inner ring", inner, -1), ("outer ring", outer, 1)],
        ),
    ];
    let mut rng = SplitMix(args.seed.wrapping_mul(0x9E37_79B9).wrapping_add(17));
    let mut reference = f64::NAN;
    let mut survey = Survey {
        judged: Vec::new(),
        panels: Vec::new(),
        torus_map: Vec::new(),
        passes: 0,
    };
    for (name, sample, elevation, regions) in &surfaces {
        let points = sample(&mut rng, args.n);
        let x = points_array(&points, dtype);
        let walk = walk(args, gaussian, ball, &x)?;
        survey.passes += walk.products;
        if *name == "plane" {
            let interior = points
                .iter()
                .zip(&walk.laziness)
                .filter(|(p, _)| axis_distance(p) < DISC_INTERIOR)
                .map(|(_, &l)| l)
                .collect();
            reference = median(interior);
        }
        let curvature: Vec<f64> = walk.laziness.iter().map(|l| l - reference).collect();
        let mut line = format!(
            "{name:<6} N = {}: {:.2} s, {} kernel passes; {}; curvature",
            args.n, walk.seconds, walk.products, walk.eigen_summary
        );
        for (region, inside, sign) in regions {
            let (mean, count) = mean_over(&curvature, |i| inside(&points[i]));
            line += &format!(" {region} {mean:+.4} ({count} points)");
            survey
                .judged
                .push((format!("{name} {region}"), mean, *sign));
        }
        println!("{line}");
        if *name == "plane" {
            println!("  flat reference: median laziness {reference:.4} within {DISC_INTERIOR} of the disc's centre");
        }
        if *name == "torus" {
            survey.torus_map = walk
                .map
                .iter()
                .zip(&curvature)
                .map(|(m, &c)| (*m, c))
                .collect();
        }
        survey.panels.push((points, curvature, *elevation));
    }
    Ok(survey)
}

/// Prints each region's curvature against the sign expected: positive on the sphere and the
/// torus's outer ring, negative at the saddle's centre and on the inner ring, the disc's
/// centre much nearer 0 than the sphere. Whether all are right.
fn judge_signs(judged: &[(String, f64, i32)]) -> bool {
    let sphere = judged
        .iter()
        .find(|j| j.0 == "sphere all")
        .map_or(f64::NAN, |j| j.1);
    let mut ok = true;
    for (region, mean, sign) in judged {
        let (right, expected) = match sign {
            1 => (*mean > 0.0, "positive".to_string()),
            -1 => (*mean < 0.0, "negative".to_string()),
            _ => (
                mean.abs() < 0.5 * sphere.abs(),
                format!("about 0: |c| < {:.4}", 0.5 * sphere.abs()),
            ),
        };
        ok &= right;
        println!(
            "curvature {region}: {mean:+.5} (expected {expected}){}",
            if right { "" } else { "  WRONG" }
        );
    }
    ok
}

/// A cloud, its curvature, and the elevation it is seen from (degrees).
type Panel = (Vec<[f64; 3]>, Vec<f64>, f64);

/// diffusion_curvature.png: the four clouds in a 2 x 2 grid above a colour bar;
/// diffusion_map.png: the torus's diffusion-map coordinates.
fn plot(
    out: &Path,
    panels: &[Panel],
    torus_map: &[([f64; 2], f64)],
    limit: f64,
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("--out `{}`: {e}", out.display()))?;
    const PANEL: usize = 420;
    const SHOWN: usize = 30_000;
    let radius = |n: usize| if n > 10_000 { 1.0 } else { 1.5 };
    let bar = 24;
    let mut image = Image::new(2 * PANEL, 2 * PANEL + bar + 8, [255, 255, 255]);
    for (p, (points, curvature, elevation)) in panels.iter().enumerate() {
        let every = points.len().div_ceil(SHOWN).max(1);
        let projected: Vec<_> = points
            .iter()
            .zip(curvature)
            .step_by(every)
            .map(|(q, &c)| {
                let (x, y, depth) = project(*q, 0.35, elevation.to_radians());
                (x, y, depth, diverging(c, limit))
            })
            .collect();
        let panel = scatter(&projected, PANEL, radius(projected.len()));
        image.paste(&panel, (p % 2) * PANEL, (p / 2) * PANEL);
    }
    let width = image.width;
    for x in 0..width {
        let value = (2.0 * x as f64 / (width - 1) as f64 - 1.0) * limit;
        image.rect(
            x,
            2 * PANEL + 4,
            x + 1,
            2 * PANEL + 4 + bar,
            diverging(value, limit),
        );
    }
    let path = out.join("diffusion_curvature.png");
    image
        .write_png(&path)
        .map_err(|e| format!("`{}`: {e}", path.display()))?;
    println!(
        "plot: {} (clouds coloured by curvature, blue {:+.3} to red {:+.3})",
        path.display(),
        -limit,
        limit
    );
    let every = torus_map.len().div_ceil(SHOWN).max(1);
    let points: Vec<_> = torus_map
        .iter()
        .step_by(every)
        .map(|(m, c)| (m[0], m[1], 0.0, diverging(*c, limit)))
        .collect();
    let map = scatter(&points, 2 * PANEL, radius(points.len()));
    let path = out.join("diffusion_map.png");
    map.write_png(&path)
        .map_err(|e| format!("`{}`: {e}", path.display()))?;
    println!(
        "plot: {} (the torus's lambda^t psi_2 against lambda^t psi_3, coloured by curvature)",
        path.display()
    );
    Ok(())
}
