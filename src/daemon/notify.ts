import { spawn } from 'node:child_process';
import { rootLogger } from '../log';
import { sendUnixDatagram } from '../nbd/netlink/syscalls';

/**
 * Tell systemd (Type=notify) about our state: one datagram on NOTIFY_SOCKET,
 * sent from this process (the main PID), as sd_notify(3) does. Without the
 * FFI package it falls back to systemd-notify --pid=ours, which needs
 * NotifyAccess=all. Without NOTIFY_SOCKET this does nothing.
 */
export function notifySystemd(state: string): void {
  const socket = process.env.NOTIFY_SOCKET;
  if (!socket) return;
  try {
    sendUnixDatagram(socket, Buffer.from(state));
    return;
  } catch (err) {
    rootLogger().debug({ err }, 'cannot send to NOTIFY_SOCKET directly; trying systemd-notify');
  }
  try {
    const child = spawn('systemd-notify', [`--pid=${process.pid}`, ...state.split('\n')], { stdio: 'ignore' });
    child.on('error', (err) => rootLogger().warn({ err }, 'systemd-notify failed'));
  } catch (err) {
    rootLogger().warn({ err }, 'systemd-notify failed');
  }
}
