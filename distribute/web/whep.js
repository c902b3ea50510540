// WHEP viewer (draft-ietf-wish-whep): the one browser client the node ships. The node's
// /watch page and the placement console (from another origin: the WHEP routes answer
// CORS) load it from /static/whep.js.
//
//   const session = await NearcastWhep.play(endpoint, video, { token, onState });
//   session.close();
//
// The node gathers every candidate before it answers and does not trickle (PATCH is
// 405), so the offer goes out once with every candidate of ours too. A refused offer
// throws an Error with .status and .reason (the node's plain-text answer).
(function (global) {
  "use strict";

  function gathered(peer, timeoutMs) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (peer.iceGatheringState === "complete") resolve(); };
      peer.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, timeoutMs);
    });
  }

  async function play(endpoint, video, options) {
    const opts = options || {};
    // A playback token goes as the bearer token (distribute.access).
    const headers = opts.token ? { "Authorization": "Bearer " + opts.token } : {};
    const url = new URL(endpoint, global.location.href).href;
    const pc = new RTCPeerConnection();
    let resource = null;
    const session = {
      pc,
      get resource() { return resource; },
      close(closeOptions) {
        pc.close();
        if (resource) {
          const keepalive = Boolean(closeOptions && closeOptions.keepalive);
          fetch(resource, { method: "DELETE", headers, keepalive }).catch(() => {});
          resource = null;
        }
      },
    };
    try {
      const stream = new MediaStream();
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.ontrack = (ev) => {
        stream.addTrack(ev.track);
        video.srcObject = stream;
        video.play().catch(() => {});
      };
      if (opts.onState) pc.onconnectionstatechange = () => opts.onState(pc.connectionState);
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 2000);
      const r = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/sdp", ...headers },
        body: pc.localDescription.sdp,
      });
      if (r.status !== 201) {
        const reason = (await r.text()).trim();
        const err = new Error(`WHEP refused: ${r.status} ${reason}`);
        err.status = r.status;
        err.reason = reason;
        throw err;
      }
      resource = new URL(r.headers.get("Location"), url).href;
      await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    } catch (err) {
      session.close();
      throw err;
    }
    return session;
  }

  global.NearcastWhep = { play };
})(window);
