//! From the vocoder's spectrum to samples and a WAV file: WavTokenizer
//! gives, per audio code, `n_fft/2 + 1` log-magnitudes and as many phases;
//! an inverse real FFT of each frame, a Hann window, overlap-add with a hop
//! of `n_fft/4`, and division by the summed squared window (an inverse
//! STFT with "same" padding) give the waveform.

use std::io::Cursor;
use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner};

/// The sample rate of WavTokenizer's audio (and of audio.wav).
pub const SAMPLE_RATE: u32 = 24_000;

/// Magnitudes above this are clipped (a runaway frame would otherwise
/// drown the rest), as llama.cpp's tts example does.
const MAX_MAGNITUDE: f32 = 100.0;

/// The inverse STFT for one vocoder output width.
pub struct Istft {
    n_fft: usize,
    hop: usize,
    window: Vec<f32>,
    plan: Arc<dyn ComplexToReal<f32>>,
}

impl Istft {
    /// For a vocoder that outputs `n_out` values per code (`n_fft + 2`);
    /// `None` for a width no WavTokenizer decoder has.
    pub fn for_output_width(n_out: usize) -> Option<Istft> {
        if n_out < 10 || n_out % 2 != 0 || (n_out - 2) % 4 != 0 {
            return None;
        }
        let n_fft = n_out - 2;
        // A periodic Hann window.
        let window = (0..n_fft)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / n_fft as f32).cos())
            .collect();
        let plan = RealFftPlanner::<f32>::new().plan_fft_inverse(n_fft);
        Some(Istft {
            n_fft,
            hop: n_fft / 4,
            window,
            plan,
        })
    }

    /// Samples per audio code.
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// The waveform of `frames` (each `n_fft + 2` values: log-magnitudes,
    /// then phases); `hop` samples per frame.
    pub fn samples(&self, frames: &[Vec<f32>]) -> Vec<f32> {
        let (n_fft, hop) = (self.n_fft, self.hop);
        let n_bins = n_fft / 2 + 1;
        if frames.is_empty() {
            return Vec::new();
        }
        let total = (frames.len() - 1) * hop + n_fft;
        let mut sum = vec![0f32; total];
        let mut env = vec![0f32; total];
        let mut spec = self.plan.make_input_vec();
        let mut frame = self.plan.make_output_vec();
        let mut scratch = self.plan.make_scratch_vec();
        let scale = 1.0 / n_fft as f32;
        for (l, f) in frames.iter().enumerate() {
            for (k, c) in spec.iter_mut().enumerate() {
                let mag = f[k].exp().min(MAX_MAGNITUDE);
                let mag = if mag.is_finite() { mag } else { 0.0 };
                let phi = f[k + n_bins];
                *c = Complex32::from_polar(mag, if phi.is_finite() { phi } else { 0.0 });
            }
            // A real signal's spectrum has real DC and Nyquist bins.
            spec[0].im = 0.0;
            spec[n_bins - 1].im = 0.0;
            // The only error is non-real DC/Nyquist input, ruled out above.
            let _ = self.plan.process_with_scratch(&mut spec, &mut frame, &mut scratch);
            let at = l * hop;
            for i in 0..n_fft {
                let w = self.window[i];
                sum[at + i] += frame[i] * scale * w;
                env[at + i] += w * w;
            }
        }
        // "Same" padding: drop (n_fft - hop) / 2 samples at each end, so
        // that every code gives exactly `hop` samples.
        let pad = (n_fft - hop) / 2;
        (pad..total - pad)
            .map(|i| if env[i] > 1e-11 { sum[i] / env[i] } else { 0.0 })
            .collect()
    }
}

/// Writing WAV bytes failed at `step` ("the WAV header", "the WAV samples").
#[derive(Debug, thiserror::Error)]
#[error("writing {step}: {source}")]
pub struct WavError {
    pub step: &'static str,
    pub source: hound::Error,
}

/// 16-bit PCM mono WAV bytes of `samples` (floats in [-1, 1], clipped).
pub fn wav_bytes(samples: &[f32]) -> Result<Vec<u8>, WavError> {
    let fail = |step| move |source| WavError { step, source };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut buf = Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        let mut w = hound::WavWriter::new(&mut buf, spec).map_err(fail("the WAV header"))?;
        let mut w16 = w.get_i16_writer(samples.len() as u32);
        for s in samples {
            let s = if s.is_finite() { *s } else { 0.0 };
            w16.write_sample((s * 32767.0).clamp(-32768.0, 32767.0) as i16);
        }
        w16.flush().map_err(fail("the WAV samples"))?;
        w.finalize().map_err(fail("the end of the WAV file"))?;
    }
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose spectrum is a single cosine of bin `k` with amplitude a.
    fn tone_frame(n_fft: usize, k: usize, mag: f32) -> Vec<f32> {
        let n_bins = n_fft / 2 + 1;
        let mut f = vec![-30.0; 2 * n_bins];
        f[k] = mag.ln();
        f[n_bins + k] = 0.0;
        f
    }

    #[test]
    fn each_code_gives_one_hop_of_samples() {
        let t = Istft::for_output_width(1282).unwrap();
        assert_eq!(t.hop(), 320);
        let frames = vec![tone_frame(1280, 10, 1.0); 7];
        assert_eq!(t.samples(&frames).len(), 7 * 320);
        assert!(t.samples(&[]).is_empty());
    }

    #[test]
    fn a_steady_tone_comes_back_as_that_tone() {
        // Bin k of an n-point FFT is k * 24000 / n Hz; a cosine of
        // amplitude A has |X[k]| = A * n / 2.
        let (n, k, amp) = (1280usize, 32usize, 0.1f32); // |X[k]| = 64, under the clip at 100
        let t = Istft::for_output_width(n + 2).unwrap();
        let frames = vec![tone_frame(n, k, amp * n as f32 / 2.0); 40];
        let s = t.samples(&frames);
        // The frames are not windowed before, so away from the edges the
        // overlap-add gives the tone times sum(w) / sum(w^2) = 2 / 1.5.
        for (i, v) in s.iter().enumerate().skip(2000).take(6000) {
            let tone = amp * (2.0 * std::f32::consts::PI * k as f32 * (i + 480) as f32 / n as f32).cos();
            let want = tone * 2.0 / 1.5;
            assert!((v - want).abs() < 1e-4, "sample {i}: {v} vs {want}");
        }
    }

    #[test]
    fn other_widths_are_refused_with_the_reason() {
        assert!(Istft::for_output_width(1283).is_none());
        assert!(Istft::for_output_width(4).is_none());
        // The reason the vocoder's loader gives for such a width.
        let e = crate::error::EngineError::VocoderWidth {
            path: "v.gguf".into(),
            n_out: 1283,
        };
        assert!(e.to_string().contains("1282"), "{e}");
    }

    #[test]
    fn wav_bytes_are_24khz_mono_16_bit() {
        let b = wav_bytes(&[0.0, 0.5, -1.5, f32::NAN]).unwrap();
        assert_eq!(&b[0..4], b"RIFF");
        assert_eq!(&b[8..12], b"WAVE");
        let r = hound::WavReader::new(Cursor::new(&b)).unwrap();
        let spec = r.spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 24_000, 16));
        let s: Vec<i16> = r.into_samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, [0, 16383, -32768, 0]);
    }
}
