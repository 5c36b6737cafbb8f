//! Planning a job: the daemon's defaults and the job's own settings become
//! one request description and the record of the values used (meta.json's
//! `params`). Pure: no files, no model; the seed for a job that names none
//! is passed in.

use nrvna_core::{JobType, Params};
use nrvna_engine::{EngineConfig, Sampling};
use serde_json::{json, Value};

use super::spec::JobSpec;

/// Where a text job's output constraint comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    None,
    /// `grammar.gbnf`, the effective grammar (written by the submitter,
    /// derived from the schema when there is one).
    Gbnf(String),
    /// Only `schema.json`: convert it with llama.cpp's converter.
    Schema(String),
}

/// What to run for a job.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Text {
        system: Option<String>,
        sampling: Sampling,
        max_tokens: u32,
        stop: Vec<String>,
        constraint: Constraint,
    },
    Embed,
    /// Text to speech: how to pick among the model's audio codes.
    Speech {
        temp: f32,
        top_k: u32,
        seed: u32,
    },
}

/// Plans `spec` under the daemon's defaults; returns the plan and the
/// values used (recorded in meta.json).
pub fn plan(spec: &JobSpec, d: &EngineConfig, fresh_seed: u32) -> (Plan, Value) {
    match spec.job_type {
        JobType::Embed => (Plan::Embed, json!({})),
        // Vision and speech-to-text jobs generate text like a text job;
        // their media are attached to the request.
        JobType::Text | JobType::Vision | JobType::Stt => plan_text(spec, &spec.params, d, fresh_seed),
        JobType::Tts => plan_speech(&spec.params, d, fresh_seed),
    }
}

/// A speech job samples as llama.cpp's tts example does (top-k 4 of the
/// model's distribution) unless the job sets its own temp or top_k; the
/// daemon's text defaults do not apply.
fn plan_speech(p: &Params, d: &EngineConfig, fresh_seed: u32) -> (Plan, Value) {
    let temp = p.temp.unwrap_or(nrvna_engine::tts::DEFAULT_TEMP);
    let top_k = p
        .top_k
        .and_then(|k| u32::try_from(k).ok())
        .filter(|k| *k > 0)
        .unwrap_or(nrvna_engine::tts::DEFAULT_TOP_K);
    let seed = p.seed.or(d.sampling.seed).unwrap_or(fresh_seed);
    let mut used = json!({ "temp": f32_json(temp), "top_k": top_k, "seed": seed });
    if let Some(t) = p.timeout_s {
        used["timeout_s"] = json!(t);
    }
    (Plan::Speech { temp, top_k, seed }, used)
}

fn plan_text(spec: &JobSpec, p: &Params, d: &EngineConfig, fresh_seed: u32) -> (Plan, Value) {
    let sampling = Sampling {
        temp: p.temp.unwrap_or(d.sampling.temp),
        top_k: p.top_k.unwrap_or(d.sampling.top_k),
        top_p: p.top_p.unwrap_or(d.sampling.top_p),
        min_p: p.min_p.unwrap_or(d.sampling.min_p),
        repeat_penalty: p.repeat_penalty.unwrap_or(d.sampling.repeat_penalty),
        frequency_penalty: p.frequency_penalty.unwrap_or(d.sampling.frequency_penalty),
        presence_penalty: p.presence_penalty.unwrap_or(d.sampling.presence_penalty),
        repeat_last_n: d.sampling.repeat_last_n,
        seed: Some(p.seed.or(d.sampling.seed).unwrap_or(fresh_seed)),
    };
    let max_tokens = p.max_tokens.unwrap_or(d.predict);
    let stop = p.stop.clone().unwrap_or_default();
    let constraint = match (&spec.grammar, &spec.schema) {
        (Some(g), _) => Constraint::Gbnf(g.clone()),
        (None, Some(schema)) => Constraint::Schema(schema.to_string()),
        (None, None) => Constraint::None,
    };
    let mut used = json!({
        "temp": f32_json(sampling.temp),
        "top_k": sampling.top_k,
        "top_p": f32_json(sampling.top_p),
        "min_p": f32_json(sampling.min_p),
        "repeat_penalty": f32_json(sampling.repeat_penalty),
        "repeat_last_n": sampling.repeat_last_n,
        "seed": sampling.seed,
        "max_tokens": max_tokens,
        "stop": stop,
        "system": p.system.is_some(),
    });
    for (k, v) in [
        ("frequency_penalty", sampling.frequency_penalty),
        ("presence_penalty", sampling.presence_penalty),
    ] {
        if v != 0.0 {
            used[k] = f32_json(v);
        }
    }
    if let Some(t) = p.timeout_s {
        used["timeout_s"] = json!(t);
    }
    (
        Plan::Text {
            system: p.system.clone(),
            sampling,
            max_tokens,
            stop,
            constraint,
        },
        used,
    )
}

/// An f32 as the JSON number a person typed (0.8, not 0.800000011920929).
fn f32_json(x: f32) -> Value {
    format!("{x}").parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nrvna_core::Meta;

    fn defaults() -> EngineConfig {
        EngineConfig {
            max_ctx: 2048,
            predict: 100,
            threads: 1,
            gpu_layers: 0,
            n_batch: 512,
            sampling: Sampling {
                temp: 0.8,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.05,
                repeat_penalty: 1.1,
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
                repeat_last_n: 64,
                seed: None,
            },
            prefix_reuse_min: 16,
            chat_template_file: None,
            flash_attn: nrvna_engine::FlashAttn::Auto,
            tts_mute_ms: 250,
            test_decode_fault: None,
            kv_streams: true,
            flash_attn_streams: nrvna_engine::FlashAttn::Auto,
            unified_slots: 0,
        }
    }

    fn spec(job_type: JobType, params: Params) -> JobSpec {
        JobSpec {
            job_type,
            prompt: "hi".into(),
            params,
            meta: Meta::new(),
            grammar: None,
            schema: None,
            images: Vec::new(),
            audio: Vec::new(),
        }
    }

    #[test]
    fn job_values_win_over_defaults_and_are_recorded() {
        let p = Params {
            temp: Some(0.0),
            max_tokens: Some(7),
            seed: Some(42),
            stop: Some(vec!["\n".into()]),
            ..Params::default()
        };
        let (plan, used) = plan(&spec(JobType::Text, p), &defaults(), 999);
        let Plan::Text {
            sampling,
            max_tokens,
            stop,
            constraint,
            ..
        } = plan
        else {
            panic!("text plan expected")
        };
        assert_eq!((sampling.temp, sampling.top_k, sampling.seed), (0.0, 40, Some(42)));
        assert_eq!(max_tokens, 7);
        assert_eq!(stop, vec!["\n".to_owned()]);
        assert_eq!(constraint, Constraint::None);
        assert_eq!(used["temp"], 0.0);
        assert_eq!(used["top_p"], 0.9, "recorded as typed, not as f32 noise");
        assert_eq!(used["seed"], 42);
        assert_eq!(used["system"], false);
    }

    #[test]
    fn a_job_without_a_seed_gets_the_fresh_one_and_the_daemon_seed_wins_over_it() {
        let (plan1, used) = plan(&spec(JobType::Text, Params::default()), &defaults(), 999);
        assert_eq!(used["seed"], 999);
        let mut d = defaults();
        d.sampling.seed = Some(5);
        let (_, used) = plan(&spec(JobType::Text, Params::default()), &d, 999);
        assert_eq!(used["seed"], 5);
        assert!(matches!(plan1, Plan::Text { max_tokens: 100, .. }));
    }

    #[test]
    fn grammar_gbnf_is_the_effective_constraint_even_beside_a_schema() {
        let mut s = spec(JobType::Text, Params::default());
        s.schema = Some(json!({"type": "integer"}));
        let (p, _) = plan(&s, &defaults(), 1);
        assert!(matches!(p, Plan::Text { constraint: Constraint::Schema(ref j), .. } if j == "{\"type\":\"integer\"}"));
        s.grammar = Some("root ::= [0-9]+".into());
        let (p, _) = plan(&s, &defaults(), 1);
        assert!(matches!(p, Plan::Text { constraint: Constraint::Gbnf(ref g), .. } if g == "root ::= [0-9]+"));
    }

    #[test]
    fn embed_and_speech_plans() {
        assert_eq!(
            plan(&spec(JobType::Embed, Params::default()), &defaults(), 1).0,
            Plan::Embed
        );
        // Speech samples as llama.cpp's tts example unless the job says otherwise.
        let (p, used) = plan(&spec(JobType::Tts, Params::default()), &defaults(), 9);
        assert_eq!(
            p,
            Plan::Speech {
                temp: 1.0,
                top_k: 4,
                seed: 9
            }
        );
        assert_eq!(used, json!({"temp": 1.0, "top_k": 4, "seed": 9}));
        let own = Params {
            temp: Some(0.0),
            top_k: Some(10),
            seed: Some(5),
            ..Params::default()
        };
        assert_eq!(
            plan(&spec(JobType::Tts, own), &defaults(), 9).0,
            Plan::Speech {
                temp: 0.0,
                top_k: 10,
                seed: 5
            }
        );
    }
}
