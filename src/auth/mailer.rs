//! Sends login codes: over SMTP when `SMTP_URL` is set, otherwise to the server log
//! (development only; production refuses to start without SMTP).

use std::time::Duration;

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};

use super::email::Email;
use crate::config::Config;

#[derive(Clone)]
pub enum Mailer {
    Smtp { transport: Box<AsyncSmtpTransport<Tokio1Executor>>, from: Box<Mailbox> },
    Log,
}

impl Mailer {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let Some(url) = &config.smtp_url else { return Ok(Self::Log) };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .with_context(|| format!("SMTP_URL is not a valid SMTP URL ({})", url.redacted()))?
            .timeout(Some(Duration::from_secs(15)))
            .build();
        let from = config.mail_from.parse().context("MAIL_FROM is not a valid mailbox")?;
        Ok(Self::Smtp { transport: Box::new(transport), from: Box::new(from) })
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Self::Smtp { .. } => "smtp",
            Self::Log => "log",
        }
    }

    pub async fn send_code(&self, to: &Email, code: &str, tenant_name: &str, ttl: Duration) -> anyhow::Result<()> {
        match self {
            Self::Log => {
                // Development mode only (refused in production): the code is the point of this line.
                tracing::warn!(
                    target: "docuchat::mail",
                    to = %to, tenant = tenant_name,
                    "no SMTP_URL configured: login code {code} (valid {} minutes)", ttl.as_secs() / 60
                );
                Ok(())
            }
            Self::Smtp { transport, from } => {
                let minutes = ttl.as_secs() / 60;
                let body = format!(
                    "Your DocuChat login code for {tenant_name} is:\n\n    {code}\n\n\
                     It is valid for {minutes} minutes and works once. If you did not ask for it, ignore this e-mail.\n\n\
                     \u{200F}کد ورود شما به DocuChat برای {tenant_name}:\n\n    {code}\n\n\
                     \u{200F}این کد {minutes} دقیقه اعتبار دارد و فقط یک بار کار می‌کند. اگر آن را درخواست نکرده‌اید، این ایمیل را نادیده بگیرید.\n"
                );
                let message = Message::builder()
                    .from(Mailbox::clone(from))
                    .to(Mailbox::new(None, to.as_str().parse().context("recipient address")?))
                    .subject(format!("DocuChat login code: {code}"))
                    .header(ContentType::TEXT_PLAIN)
                    .body(body)
                    .context("cannot build the e-mail")?;
                transport.send(message).await.context("SMTP delivery failed")?;
                Ok(())
            }
        }
    }
}
