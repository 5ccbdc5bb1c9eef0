//! The gRPC side: [`GrpcGuard`] is a tonic interceptor running [`Guard::check`] on the
//! `authorization` metadata of each call as if it were a request to `route` (the rule table
//! names gRPC methods like HTTP routes, e.g.
//! `/opentelemetry.proto.collector.trace.v1.TraceService/Export`). Refusals are the gRPC
//! statuses `UNAUTHENTICATED`, `PERMISSION_DENIED` and `RESOURCE_EXHAUSTED` (with a
//! `retry-after` entry); header size and timeouts are the tonic server's
//! (`http2_max_header_list_size`, `timeout`).

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::guard::{Denial, Guard};

/// A tonic interceptor checking every call against one rule of the guard.
#[derive(Clone)]
pub struct GrpcGuard {
    guard: Guard,
    route: &'static str,
}

impl GrpcGuard {
    pub fn new(guard: Guard, route: &'static str) -> Self {
        Self { guard, route }
    }
}

/// The gRPC status of a refusal.
pub fn status_of(denial: &Denial) -> Status {
    let message = denial.to_string();
    match denial {
        Denial::Unauthenticated(_) => Status::unauthenticated(message),
        Denial::Forbidden { .. } => Status::permission_denied(message),
        Denial::RateLimited {
            retry_after_secs, ..
        } => {
            let mut s = Status::resource_exhausted(message);
            if let Ok(v) = MetadataValue::try_from(retry_after_secs.to_string()) {
                s.metadata_mut().insert("retry-after", v);
            }
            s
        }
        Denial::HeadersTooLarge { .. } => Status::invalid_argument(message),
        Denial::Timeout(_) => Status::deadline_exceeded(message),
    }
}

impl Interceptor for GrpcGuard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match self.guard.check(Some(self.route), authorization) {
            Ok(principal) => {
                if let Some(p) = principal {
                    request.extensions_mut().insert(p);
                }
                Ok(request)
            }
            Err(denial) => Err(status_of(&denial)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessConfig;
    use crate::guard::{Access, Rule};
    use crate::scope::Scope;

    static RULES: &[Rule] = &[Rule::new("/svc/Export", Access::Scope(Scope::TracesWrite))];

    #[test]
    fn calls_need_a_token_with_the_scope() {
        let f = crate::fixture::guard(
            RULES,
            &[("w", &[Scope::TracesWrite]), ("r", &[Scope::TracesRead])],
            AccessConfig::default(),
        );
        let (writer, reader) = (&f.tokens[0], &f.tokens[1]);
        let mut g = GrpcGuard::new(f.guard.clone(), "/svc/Export");
        let with = |t: &str| {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
            r
        };
        assert_eq!(
            g.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            g.call(with(reader)).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(g.call(with(writer)).is_ok());
        let limited = status_of(&Denial::RateLimited {
            token: "w".into(),
            retry_after_secs: 2,
        });
        assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
        assert_eq!(limited.metadata().get("retry-after").unwrap(), "2");
    }
}
