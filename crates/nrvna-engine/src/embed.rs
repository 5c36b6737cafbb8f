//! Embedding helpers: pooling choice and L2 normalisation.

use llama_cpp_2::context::params::LlamaPoolingType;

/// Mean pooling for decoder models (which declare no pooling), else the
/// model's own (`<arch>.pooling_type` in the GGUF metadata).
pub fn pooling_for(model: &llama_cpp_2::model::LlamaModel) -> LlamaPoolingType {
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    match model
        .meta_val_str(&format!("{arch}.pooling_type"))
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(2) => LlamaPoolingType::Cls,
        Some(3) => LlamaPoolingType::Last,
        _ => LlamaPoolingType::Mean,
    }
}

/// L2-normalises a vector; `Err` when it holds a non-finite value or is all zeros.
pub fn normalize(v: &[f32]) -> Result<Vec<f32>, String> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err("the model produced a non-finite embedding value".into());
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err("the model produced an all-zero embedding".into());
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize_gives_unit_length_and_refuses_nan() {
        let v = super::normalize(&[3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(super::normalize(&[f32::NAN, 1.0]).is_err());
        assert!(super::normalize(&[0.0, 0.0]).is_err());
    }
}
