//! `POST /webhooks/iterable/{connection}`: Iterable system webhooks, authenticated by the
//! connection's webhook token (`iterable::webhook` says how it is presented and what a body
//! becomes).

use super::record::{header, Ingest};
use super::segment::NO_SUCH_SECRET;
use crate::audit::Direction;
use crate::configuration::secret;
use crate::connection::Connections;
use crate::error::IngestError;
use crate::iterable::webhook::{events_of, presented_token};
use crate::segment::auth::secrets_equal;
use actix_web::{web, HttpRequest, HttpResponse};

pub async fn iterable_webhook(
    req: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    ingest: web::Data<Ingest>,
    connections: web::Data<Connections>,
) -> Result<HttpResponse, IngestError> {
    let mut body = ingest
        .read_body(&req, payload, ingest.limits.max_batch_bytes)
        .await;
    let problem = body.problem.take();
    let connection = connections.by_name(&name);
    let expected = connection.and_then(|c| secret(&c.settings.webhook_token));
    let presented = header(&req, "authorization").map(presented_token);
    let matches = secrets_equal(presented.unwrap_or(""), expected.unwrap_or(NO_SUCH_SECRET));
    let verified = match (connection, expected, presented) {
        (None, _, _) => Err(format!("no connection is named {:?}", name.as_str())),
        (Some(_), None, _) => {
            Err("this connection has no webhook_token, so it accepts no Iterable webhooks".into())
        }
        (Some(_), Some(_), None) => {
            Err("no Authorization header: send the connection's webhook token".into())
        }
        (Some(c), Some(_), Some(_)) if matches => Ok(c),
        (Some(_), Some(_), Some(_)) => Err("invalid webhook token".into()),
    };
    let events = (problem.is_none() && verified.is_ok()).then(|| {
        let c = verified.as_ref().expect("verified");
        events_of(&body.bytes, &c.event_names)
    });
    let (audit, _) = ingest
        .open(&req, body, Direction::IterableToSegment)
        .authenticate_webhook(problem, verified)
        .await?;
    audit.finish(events.expect("made once verified")).await
}
