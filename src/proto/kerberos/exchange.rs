//! KDC exchanges as a protocol step without IO. sspi's Kerberos calls are generators
//! that stop at every KDC exchange they need; here such a call becomes a
//! [`KdcConversation`]: it says what to ask the realm's KDCs next, or how it ended, and
//! takes their answer. The IO is the caller's (`kerberos::kdc::converse` does it
//! over the configured KDCs), so nothing here knows where a KDC is.

use sspi::generator::{Generator, GeneratorState, NetworkRequest};
use sspi::{
    BufferType, ClientRequestFlags, CredentialsBuffers, DataRepresentation, InitializeSecurityContextResult,
    SecurityBuffer, Sspi, SspiImpl,
};

use crate::proto::guard::{contain_panic, Panicked};

/// A KDC's answer to one request.
#[derive(Debug, Clone)]
pub struct KdcReply {
    /// The KDC that answered, as configured.
    pub kdc: String,
    /// The reply with the 4-byte length prefix, as sspi takes it whichever the
    /// transport was.
    framed: Vec<u8>,
}

impl KdcReply {
    /// The reply `message` (a bare Kerberos message) of `kdc`.
    pub fn new(kdc: String, message: &[u8]) -> KdcReply {
        let mut framed = Vec::with_capacity(message.len() + 4);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        KdcReply { kdc, framed }
    }

    /// The bare Kerberos message.
    pub fn message(&self) -> &[u8] {
        &self.framed[4..]
    }

    /// The reply with its length prefix, as sspi is resumed with it.
    pub fn into_framed(self) -> Vec<u8> {
        self.framed
    }
}

/// What a conversation needs next.
#[derive(Debug)]
pub enum KdcTurn<T> {
    /// Send this to the realm's KDCs; their answer goes to [`KdcConversation::answer`].
    Ask(NetworkRequest),
    /// The conversation is over.
    Done(T),
}

/// Work that may need the realm's KDCs, stepped without IO: [`KdcConversation::start`],
/// then [`KdcConversation::answer`] with the reply to each request it asks for, until
/// it is done. A KDC that cannot be reached ends it (the caller drops it).
pub trait KdcConversation {
    type Outcome;

    fn start(&mut self) -> KdcTurn<Self::Outcome>;

    fn answer(&mut self, reply: KdcReply) -> KdcTurn<Self::Outcome>;
}

/// What an [`InitStep`] asks of sspi's InitializeSecurityContext.
pub(crate) struct InitInput {
    /// The service principal the context is for.
    pub target_name: String,
    pub flags: ClientRequestFlags,
    /// The input buffers: the target's token (empty at first), channel bindings.
    pub buffers: Vec<SecurityBuffer>,
}

/// How an [`InitStep`] ended: the context and credentials handle back, sspi's result
/// and the token it wrote.
pub(crate) struct Finished<C> {
    pub ctx: C,
    pub handle: Option<CredentialsBuffers>,
    pub result: sspi::Result<InitializeSecurityContextResult>,
    pub token: Vec<u8>,
}

/// The state of an [`InitStep`]: stopped at a KDC request, or finished.
pub(crate) type InitState<C> = GeneratorState<NetworkRequest, Finished<C>>;

/// One InitializeSecurityContext call of sspi, on a context it holds until the call
/// ends, stopped at each KDC request. Owning the context (rather than borrowing it, as
/// sspi's own generator does) lets the call outlive the function that started it: it is
/// resumed later, with the KDC's answer. sspi's parsers read what KDCs send (UDP answers
/// can be spoofed): a panic in them is contained and ends the call.
pub(crate) struct InitStep<C> {
    generator: Generator<'static, NetworkRequest, sspi::Result<Vec<u8>>, Finished<C>>,
}

impl<C> InitStep<C>
where
    C: Sspi + SspiImpl<CredentialsHandle = Option<CredentialsBuffers>> + Send + 'static,
{
    pub(crate) fn new(ctx: C, handle: Option<CredentialsBuffers>, input: InitInput) -> InitStep<C> {
        let generator = Generator::new(move |mut yield_point| async move {
            let (mut ctx, mut handle) = (ctx, handle);
            let InitInput {
                target_name,
                flags,
                buffers: mut input,
            } = input;
            let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
            let mut builder = ctx
                .initialize_security_context()
                .with_credentials_handle(&mut handle)
                .with_context_requirements(flags)
                .with_target_data_representation(DataRepresentation::Native)
                .with_target_name(&target_name)
                .with_input(&mut input)
                .with_output(&mut output);
            let result = match ctx.initialize_security_context_impl(&mut builder) {
                Err(error) => Err(error),
                // sspi's requests go out to this step's caller, its answers come back.
                Ok(mut call) => {
                    let mut state = call.start();
                    loop {
                        match state {
                            GeneratorState::Completed(result) => break result,
                            GeneratorState::Suspended(request) => {
                                let reply = yield_point.suspend(request).await;
                                state = call.resume(reply);
                            }
                        }
                    }
                }
            };
            let token = output.pop().map(|b| b.buffer).unwrap_or_default();
            Finished {
                ctx,
                handle,
                result,
                token,
            }
        });
        InitStep { generator }
    }

    /// Run until the first KDC request, or the end.
    pub(crate) fn start(&mut self) -> Result<InitState<C>, Panicked> {
        let generator = &mut self.generator;
        contain_panic(|| generator.start())
    }

    /// Go on with the KDC's reply to the last request (with its length prefix).
    pub(crate) fn resume(&mut self, framed: Vec<u8>) -> Result<InitState<C>, Panicked> {
        let generator = &mut self.generator;
        contain_panic(|| generator.resume(Ok(framed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_framed_for_sspi_whichever_the_transport() {
        let reply = KdcReply::new("udp://kdc:88".into(), &[0x6b, 0x00]);
        assert_eq!(reply.message(), [0x6b, 0x00]);
        assert_eq!(reply.into_framed(), [0, 0, 0, 2, 0x6b, 0x00]);
    }
}
