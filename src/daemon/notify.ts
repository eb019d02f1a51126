import { spawn } from 'node:child_process';
import { rootLogger } from '../log';

/**
 * Tell systemd (Type=notify) about our state. Node cannot send unix datagrams
 * itself, so this runs systemd-notify on our behalf with --pid=ours; the unit
 * sets NotifyAccess=all so systemd accepts it. Without NOTIFY_SOCKET this does
 * nothing.
 */
export function notifySystemd(state: string): void {
  if (!process.env.NOTIFY_SOCKET) return;
  const args = [`--pid=${process.pid}`, ...state.split('\n')];
  try {
    const child = spawn('systemd-notify', args, { stdio: 'ignore' });
    child.on('error', (err) => rootLogger().warn({ err }, 'systemd-notify failed'));
  } catch (err) {
    rootLogger().warn({ err }, 'systemd-notify failed');
  }
}
