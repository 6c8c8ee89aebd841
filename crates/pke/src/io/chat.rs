//! Provides chat-template rendering with minijinja, set up as transformers sets up Jinja
//! (`trim_blocks`, `lstrip_blocks`, `raise_exception`, Python string methods), so `--chat` produces the
//! string `apply_chat_template(..., add_generation_prompt=True, tokenize=False)` produces.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One chat message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message { role: "assistant".into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Message { role: "system".into(), content: content.into() }
    }
}

/// Render `template` for `messages`.
pub fn render(template: &str, messages: &[Message], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Deterministic output: templates only use it for a "today" line.
        "26 Jul 2024".to_string()
    });
    let tmpl = env.template_from_str(template).map_err(|e| Error::ChatTemplate(format!("cannot parse: {e}")))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| Error::ChatTemplate(format!("cannot render: {e:#}")))
}

/// A reply as it follows its prompt: as is after a chat template's assistant header, after a space in
/// running text (tokenized alone, without BOS, by every caller: locate, edit, `score --reply`).
pub fn reply_text(reply: &str, chat: bool) -> String {
    if chat {
        reply.to_string()
    } else {
        format!(" {}", reply.trim_start())
    }
}

/// The prompt text as the model sees it: optional suffix, optional chat template.
pub fn prompt_text(tok: &crate::io::tokenizer::Tok, prompt: &str, chat: bool, suffix: Option<&str>) -> Result<String> {
    let p = match suffix {
        Some(s) => format!("{prompt} {s}"),
        None => prompt.to_string(),
    };
    if !chat {
        return Ok(p);
    }
    let tmpl = tok.chat_template.as_deref().ok_or_else(|| Error::ChatTemplate("the model has no chat template; drop --chat".into()))?;
    let bos = tok.bos_id.and_then(|b| tok.id_to_token(b)).unwrap_or_default();
    let eos = tok.eos_id.and_then(|b| tok.id_to_token(b)).unwrap_or_default();
    render(tmpl, &[Message::user(p)], true, &bos, &eos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_like_template_renders_with_python_methods() -> Result<()> {
        let t = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<s>sys\n{% endif %}<|{{ m.role }}|>{{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
        let out = render(t, &[Message::user("  hi ")], true, "", "")?;
        assert_eq!(out, "<s>sys\n<|user|>hi\n<|assistant|>");
        Ok(())
    }

    #[test]
    fn raise_exception_surfaces_as_error() {
        let e = render("{{ raise_exception('no system role') }}", &[], false, "", "").unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
    }
}
