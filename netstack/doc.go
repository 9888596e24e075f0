// Package netstack puts a gVisor TCP/IP stack on top of the WireGuard
// engine, so a Go program can dial and listen inside the tunnel with no
// TUN device and no privileges: Open returns a *Net whose DialContext,
// Listen and ListenPacket feel like package net's. Package
// netstack/wgquick opens one from a wg-quick file.
//
// # TCP through loss and outages
//
// A tunnel's path fails in ways a LAN's does not: a laptop sleeps, a
// phone changes networks, a NAT forgets its mapping, and for seconds or
// minutes nothing crosses; then everything does again. How soon a TCP
// connection through the tunnel moves again is up to the senders at both
// ends, and gVisor's TCP as it ships takes long, as a sender and as a
// receiver. Four changes work together against that. Each is explained
// in full where its code is; this is the one place that tells how they
// fit.
//
//  1. Our stack's own sending (recoveryOptions). Loss is detected by
//     SACK and three duplicate acknowledgements (RFC 6675), not by RACK,
//     which after a retransmission timeout counts the whole lost flight
//     as still in the pipe and sends about two segments per timeout.
//     Reno replaces CUBIC, whose gVisor form hardly grows a small window.
//     The retransmission timeout is bounded from above, so that the first
//     retransmission after an outage comes soon after the path returns,
//     and from below by less than gVisor's default, so that a short lossy
//     path keeps pace; more retries keep Linux's reach.
//  2. The timestamp echo after a silence (echoTable). The far sender is
//     whatever the peer runs, and our acknowledgements steer it. gVisor's
//     sender as it ships (wireguard-go's tun/netstack, wireproxy) crawls
//     when they echo its retransmissions, and Linux takes an echo from
//     before the outage for an RTT as long as the outage. So for one
//     window of data after a peer's segment ends a silence, the link
//     endpoint sets the echo itself: older than every retransmission it
//     answers, and fresh enough for a true RTT sample.
//  3. Acknowledgements re-sent when a peer returns (ackTable). An outage
//     swallows the acknowledgements in flight while the remote sender
//     backs its timer off. When the peer's next handshake message or
//     keepalive arrives, the link endpoint re-sends each connection's
//     latest pure acknowledgement through it, so the sender learns at
//     once what got through rather than at its next timeout. gVisor cannot
//     be asked to acknowledge, so the link endpoint keeps the last one of
//     each connection; the echo it carries is chosen per kind of sender.
//  4. The engine's signal (protocol.PeerReturner). Only the engine sees a
//     handshake message or a keepalive, which carry no IP packet. It tells
//     the link endpoint of a return only when no data ended the silence:
//     the stack answers data itself, and a duplicate right behind that
//     answer throws gVisor's sender into a crawl of one segment per
//     timeout.
//
// Net.ResentAcks counts the acknowledgements of the third change. The
// wgbore command's documentation gives the measured outcome for each kind
// of sender.
package netstack
