//! Rendering prompts with the model's own chat template (Jinja, from the GGUF
//! metadata `tokenizer.chat_template`), through minijinja.
//!
//! `NRVNA_CHAT_TEMPLATE_FILE` overrides the model's template. A model without
//! a template (a base model) gets the prompt as it is.

use minijinja::{context, Environment, Error, ErrorKind};

use crate::error::TemplateError;

/// A compiled chat template, or none (raw prompts).
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    bos: String,
    eos: String,
    /// Where the template came from (for logs).
    pub source: String,
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Builds the template from `override_file` (`NRVNA_CHAT_TEMPLATE_FILE`), else the model's.
    pub fn new(
        model_template: Option<String>,
        override_file: Option<&std::path::Path>,
        llama: &llama_cpp_2::model::LlamaModel,
    ) -> Result<ChatTemplate, TemplateError> {
        let vocab = llama.vocab();
        let piece = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let (bos, eos) = (piece(vocab.bos()), piece(vocab.eos()));
        let (src, origin) = match override_file {
            Some(f) => {
                let s = std::fs::read_to_string(f).map_err(|source| TemplateError::File {
                    path: f.to_owned(),
                    source,
                })?;
                (Some(s), format!("file {}", f.display()))
            }
            None => (model_template, "the model's GGUF metadata".to_owned()),
        };
        ChatTemplate::compile(src, bos, eos, origin)
    }

    /// Compiles template source (`None`: raw prompts).
    pub fn compile(
        src: Option<String>,
        bos: String,
        eos: String,
        origin: String,
    ) -> Result<ChatTemplate, TemplateError> {
        let Some(src) = src else {
            return Ok(ChatTemplate {
                env: None,
                bos,
                eos,
                source: "none (raw prompt)".into(),
            });
        };
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        if let Err(source) = env.add_template_owned("chat", src) {
            return Err(TemplateError::Compile { origin, source });
        }
        Ok(ChatTemplate {
            env: Some(env),
            bos,
            eos,
            source: origin,
        })
    }

    /// Renders one turn: optional system message, then the user message,
    /// ending with the assistant's opening.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, TemplateError> {
        let Some(env) = &self.env else {
            return Ok(match system {
                Some(s) => format!("{s}\n\n{user}"),
                None => user.to_owned(),
            });
        };
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(context! { role => "system", content => s });
        }
        messages.push(context! { role => "user", content => user });
        env.get_template("chat")
            .and_then(|tmpl| {
                tmpl.render(context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => self.bos.as_str(),
                    eos_token => self.eos.as_str(),
                })
            })
            .map_err(|source| TemplateError::Render {
                origin: self.source.clone(),
                source,
            })
    }
}

/// Removes `<think>...</think>` blocks (reasoning traces) from a result.
/// An unclosed block is left alone: the text is all the model produced.
pub fn strip_think(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut stripped = false;
    while let Some(start) = rest.find("<think>") {
        match rest[start..].find("</think>") {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + end + "</think>".len()..];
                stripped = true;
            }
            None => break,
        }
    }
    out.push_str(rest);
    if stripped {
        out.trim_start().to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_system() {
        let t = ChatTemplate::compile(Some(CHATML.into()), "<s>".into(), "</s>".into(), "test".into()).unwrap();
        let out = t.render(Some("Be brief."), "Hi").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ bos_token }}{{ messages[0]['content'].strip() | upper }}";
        let t = ChatTemplate::compile(Some(src.into()), "<bos>".into(), "".into(), "test".into()).unwrap();
        assert_eq!(t.render(None, "  hi  ").unwrap(), "<bos>HI");
        assert!(t.render(Some("x"), "hi").unwrap_err().to_string().contains("no system"));
    }

    #[test]
    fn no_template_means_raw_prompt() {
        let t = ChatTemplate::compile(None, String::new(), String::new(), String::new()).unwrap();
        assert_eq!(t.render(None, "abc").unwrap(), "abc");
    }

    #[test]
    fn strip_think_removes_closed_blocks_only() {
        assert_eq!(strip_think("<think>hmm</think>\n\nAnswer"), "Answer");
        assert_eq!(strip_think("a<think>x</think>b<think>y</think>c"), "abc");
        assert_eq!(strip_think("<think>unfinished"), "<think>unfinished");
        assert_eq!(strip_think("plain"), "plain");
    }
}
