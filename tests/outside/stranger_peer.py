"""An outside libp2p peer (py-libp2p) with a random key and no certificate.

It dials one zorgmesh node, subscribes to the locator topic and listens for a bounded time,
then prints one JSON line: whether the connection came up, why not, and how many gossip
messages and topic peers it saw. The zorgmesh test asserts that a stranger gets nothing.

usage: stranger_peer.py <multiaddr with /p2p/> <topic> <listen seconds>
"""

import json
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service


async def main(target: str, topic: str, seconds: float) -> dict:
    host = new_host(key_pair=create_new_key_pair())
    gossipsub = GossipSub(
        protocols=[GOSSIPSUB_PROTOCOL_ID],
        degree=3,
        degree_low=2,
        degree_high=4,
        heartbeat_interval=1,
    )
    pubsub = Pubsub(host, gossipsub)
    report = {"connected": False, "connect_error": None, "messages": 0, "topic_peers": 0}
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with host.run(listen_addrs=[listen]):
        async with background_trio_service(pubsub):
            async with background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                subscription = await pubsub.subscribe(topic)
                info = info_from_p2p_addr(multiaddr.Multiaddr(target))
                try:
                    with trio.fail_after(seconds):
                        await host.connect(info)
                    report["connected"] = True
                except BaseException as error:  # noqa: BLE001 - any failure is the answer
                    report["connect_error"] = f"{type(error).__name__}: {error}"
                with trio.move_on_after(seconds):
                    while True:
                        await subscription.get()
                        report["messages"] += 1
                report["topic_peers"] = len(pubsub.peer_topics.get(topic, []))
                report["still_connected"] = info.peer_id in host.get_network().connections
    return report


if __name__ == "__main__":
    target, topic, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    print(json.dumps(trio.run(main, target, topic, seconds)), flush=True)
