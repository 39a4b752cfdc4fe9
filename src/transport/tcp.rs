//! TCP through hickory-server (RFC 7766: pipelining, idle timeout), with an adapter that hands
//! the gateway core the raw query and re-emits its wire answer. hickory sends only what it
//! encodes, so the core's answer is parsed and handed back as records; the question is
//! re-emitted from the client's own bytes.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Message, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::debug;

use crate::gateway::{Gateway, Transport};

pub(super) struct TcpAdapter {
    pub(super) gateway: Arc<Gateway>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpAdapter {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let client: IpAddr = request.src().ip();
        let reply = self
            .gateway
            .answer(request.as_slice(), client, Transport::Tcp)
            .await;
        let message = reply.and_then(|wire| Message::from_vec(&wire).ok());
        let Some(message) = message else {
            let builder = MessageResponseBuilder::from_message_request(request);
            let failed = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            return response
                .send_response(failed)
                .await
                .unwrap_or_else(|_| failed_info(request));
        };
        let builder = MessageResponseBuilder::new(&request.queries, message.edns.as_ref());
        let answer = builder.build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        match response.send_response(answer).await {
            Ok(info) => info,
            Err(err) => {
                debug!(%err, %client, "tcp send failed");
                failed_info(request)
            }
        }
    }
}

fn failed_info(request: &Request) -> ResponseInfo {
    let mut metadata = request.metadata;
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
