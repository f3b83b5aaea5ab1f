//! `diffuse schedule`: what diffusers' `scheduler.timesteps`, `alphas_cumprod` and `sigmas`
//! hold after `set_timesteps(N)`, for a `scheduler_config.json` read as it is.

use anyhow::{Context, Result};
use diffuse_core::config::{SchedulerClass, SchedulerConfig};
use diffuse_core::sampler::Sampler;
use serde_json::{json, Map, Value};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers scheduler_config.json (its `_class_name` picks the sampler). Without it,
    /// DDIMScheduler's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of inference steps (set_timesteps(N)).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Scheduler class: a diffusers class name or ddpm, ddim, plms, euler, euler_a, heun,
    /// dpmpp_2m, unipc, lcm, flow_euler, flow_heun, edm_euler, edm_dpmpp_2m.
    #[arg(long = "class")]
    class_name: Option<String>,
    #[arg(long)]
    num_train_timesteps: Option<u64>,
    #[arg(long)]
    beta_start: Option<f64>,
    #[arg(long)]
    beta_end: Option<f64>,
    /// linear, scaled_linear, squaredcos_cap_v2, sigmoid, laplace, exp
    #[arg(long)]
    beta_schedule: Option<String>,
    /// leading, trailing, linspace
    #[arg(long)]
    timestep_spacing: Option<String>,
    #[arg(long)]
    steps_offset: Option<u64>,
    /// epsilon, sample, v_prediction
    #[arg(long)]
    prediction_type: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rescale_betas_zero_snr: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    use_karras_sigmas: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    set_alpha_to_one: Option<bool>,
    /// Flow matching σ shift.
    #[arg(long)]
    shift: Option<f64>,
    /// Any other config key, as KEY=JSON (e.g. --set solver_order=1 --set final_sigmas_type='"sigma_min"').
    #[arg(long = "set", value_name = "KEY=JSON")]
    set: Vec<String>,
}

impl Args {
    /// The config object: the file as it is, then the flags on top.
    fn config_map(&self) -> Result<Map<String, Value>> {
        let mut map = match &self.config {
            Some(path) => crate::common::read_json_object(path)?,
            None => Map::new(),
        };
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                map.insert(k.to_string(), v);
            }
        };
        put("_class_name", self.class_name.clone().map(Value::from));
        put(
            "num_train_timesteps",
            self.num_train_timesteps.map(Value::from),
        );
        put("beta_start", self.beta_start.map(Value::from));
        put("beta_end", self.beta_end.map(Value::from));
        put("beta_schedule", self.beta_schedule.clone().map(Value::from));
        put(
            "timestep_spacing",
            self.timestep_spacing.clone().map(Value::from),
        );
        put("steps_offset", self.steps_offset.map(Value::from));
        put(
            "prediction_type",
            self.prediction_type.clone().map(Value::from),
        );
        put(
            "rescale_betas_zero_snr",
            self.rescale_betas_zero_snr.map(Value::from),
        );
        put("use_karras_sigmas", self.use_karras_sigmas.map(Value::from));
        put("set_alpha_to_one", self.set_alpha_to_one.map(Value::from));
        put("shift", self.shift.map(Value::from));
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv:?}: expected KEY=JSON"))?;
            // A bare word that is not JSON is taken as a string.
            let v = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v));
            map.insert(k.to_string(), v);
        }
        Ok(map)
    }
}

pub fn run(args: Args) -> Result<()> {
    let map = args.config_map()?;
    let config = SchedulerConfig::from_json_map(&map).map_err(|e| match &args.config {
        Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
        None => anyhow::anyhow!("{e}"),
    })?;
    if !config.ignored_keys.is_empty() {
        eprintln!(
            "note: ignoring config keys diffuse does not use: {}",
            config.ignored_keys.join(", ")
        );
    }
    let sampler = Sampler::new(&config, args.steps)?;
    let integer_timesteps = matches!(
        config.class,
        SchedulerClass::Ddpm
            | SchedulerClass::Ddim
            | SchedulerClass::Pndm
            | SchedulerClass::DpmSolverMultistep
            | SchedulerClass::UniPcMultistep
    );
    if args.json {
        let timesteps: Vec<Value> = sampler
            .timesteps()
            .iter()
            .map(|&t| {
                if integer_timesteps {
                    Value::from(t as i64)
                } else {
                    Value::from(t)
                }
            })
            .collect();
        let mut out = json!({
            "_class_name": config.class.class_name(),
            "num_inference_steps": args.steps,
            "timesteps": timesteps,
            "init_noise_sigma": sampler.init_noise_sigma(),
        });
        if config.class.has_beta_schedule() && !config.uses_flow_sigmas() {
            out["alphas_cumprod"] = json!(sampler.schedule().alphas_cumprod);
        }
        if let Some(s) = sampler.sigmas() {
            out["sigmas"] = json!(s);
        }
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print_table(&config, &sampler, integer_timesteps);
    }
    Ok(())
}

fn print_table(config: &SchedulerConfig, sampler: &Sampler, integer_timesteps: bool) {
    print_header(config, sampler);
    print_body(config, sampler, integer_timesteps);
}

fn print_header(config: &SchedulerConfig, sampler: &Sampler) {
    if config.class.is_edm() {
        println!(
            "{} · {} steps · σ in [{}, {}] · {:?} ρ = {} · σ_data {} · timestep = ¼ ln σ · init_noise_sigma {:.6}",
            config.class.class_name(),
            sampler.num_inference_steps(),
            config.sigma_min.unwrap_or_default(),
            config.sigma_max.unwrap_or_default(),
            config.sigma_schedule,
            config.rho,
            config.sigma_data,
            sampler.init_noise_sigma()
        );
        return;
    }
    println!(
        "{} · {} steps ({} model calls) · T = {} · beta_schedule {} · spacing {:?} · init_noise_sigma {:.6}",
        config.class.class_name(),
        sampler.num_inference_steps(),
        sampler.len(),
        config.num_train_timesteps,
        config.beta_schedule.name(),
        config.timestep_spacing,
        sampler.init_noise_sigma()
    );
}

fn print_body(config: &SchedulerConfig, sampler: &Sampler, integer_timesteps: bool) {
    let vp = config.class.has_beta_schedule() && !config.uses_flow_sigmas();
    print!("{:>5}  {:>12}", "step", "timestep");
    if sampler.sigmas().is_some() {
        print!("  {:>14}", "sigma");
    }
    if vp {
        print!("  {:>14}  {:>12}", "alpha_cumprod", "log SNR");
    }
    println!();
    for (i, &t) in sampler.timesteps().iter().enumerate() {
        if integer_timesteps {
            print!("{i:>5}  {:>12}", t as i64);
        } else {
            print!("{i:>5}  {t:>12.4}");
        }
        if let Some(s) = sampler.sigmas() {
            print!("  {:>14.6}", s[i]);
        }
        if vp {
            let a = sampler.schedule().alpha_cumprod_at(t);
            print!("  {a:>14.8}  {:>12.4}", (a / (1.0 - a)).ln());
        }
        println!();
    }
    if let Some(s) = sampler.sigmas() {
        println!("final sigma: {}", s[s.len() - 1]);
    }
}
