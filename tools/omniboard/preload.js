// Loaded with `node -r` before Omniboard: every server socket listens on 127.0.0.1 only.
// Omniboard has no host option and Express listens on all interfaces by default; this wraps
// net.Server.prototype.listen so that whatever host a caller passes (or none), it is loopback.
'use strict';

const net = require('net');

const HOST = '127.0.0.1';
const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function listenOnLoopback(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    if (first.path === undefined && first.fd === undefined && first._handle === undefined && first.handle === undefined) {
      args[0] = Object.assign({}, first, { host: HOST });  // listen({port, host, ...}, cb)
    }
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const backlog = typeof args[2] === 'number' ? args[2] : (typeof args[1] === 'number' ? args[1] : undefined);
    args = [{ port: Number(first), host: HOST, backlog }];  // listen(port[, host][, backlog][, cb])
    if (callback) args.push(callback);
  } else if (first === undefined || typeof first === 'function') {
    args = [{ port: 0, host: HOST }, ...args.filter((a) => typeof a === 'function')];  // listen([cb])
  }
  return listen.apply(this, args);
};
