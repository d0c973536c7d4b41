#!/usr/bin/python3
"""A real RTSP camera for vigil's tests: gst-rtsp-server (Debian's python3-gi and
gir1.2-gst-rtsp-server-1.0) serving a live videotestsrc over RTSP/TCP and RTSP/UDP.

usage: rtsp_server.py [--port 0] [--auth none|basic|digest] [--codec h264|h265]
                      [--size 640x360] [--fps 25]
Listens on 127.0.0.1 (port 0: an ephemeral one) and prints the mount's URL
(rtsp://127.0.0.1:PORT/cam1) on stdout once it is listening. Credentials: admin / secret.
`kill -STOP` makes it a camera that stalls with its TCP connections open.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--port", default="0")
ap.add_argument("--auth", default="none", choices=["none", "basic", "digest"])
ap.add_argument("--codec", default="h264", choices=["h264", "h265"])
ap.add_argument("--size", default="640x360")
ap.add_argument("--fps", default="25")
args = ap.parse_args()
width, height = args.size.split("x")

Gst.init(None)
srv = GstRtspServer.RTSPServer()
srv.set_address("127.0.0.1")
srv.set_service(args.port)
srv.set_backlog(64)
factory = GstRtspServer.RTSPMediaFactory()
if args.codec == "h264":
    enc = ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=1000 "
           "! rtph264pay name=pay0 pt=96 config-interval=1")
else:
    enc = ("x265enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=1000 "
           "! rtph265pay name=pay0 pt=96 config-interval=1")
# A moving pattern: a static one would rightly look frozen to the diagnosis.
factory.set_launch(
    f"( videotestsrc is-live=true pattern=smpte horizontal-speed=4 "
    f"! video/x-raw,width={width},height={height},framerate={args.fps}/1 ! {enc} )"
)
factory.set_shared(True)
factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP)
if args.auth != "none":
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    if args.auth == "digest":
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        auth.add_digest("admin", "secret", token)
    else:
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic("admin", "secret"), token)
    srv.set_auth(auth)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_permission_for_role("user", "media.factory.access", True)
    perms.add_permission_for_role("user", "media.factory.construct", True)
    factory.set_permissions(perms)
srv.get_mount_points().add_factory("/cam1", factory)
if srv.attach(None) == 0:
    print("could not listen", file=sys.stderr)
    sys.exit(1)
print(f"rtsp://127.0.0.1:{srv.get_bound_port()}/cam1", flush=True)
GLib.MainLoop().run()
