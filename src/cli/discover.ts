import { discover, DiscoveredTarget } from '../iscsi/discovery';
import { IscsiSession } from '../iscsi/initiator';
import { parsePortalUrl, formatHostPort, type IscsiUrl } from '../iscsi/url';
import { aclHint } from '../iscsi/login';
import { LogicalUnit, deviceTypeName } from '../scsi/lun';
import { ConfigError, IscsiNbdError } from '../errors';
import { rootLogger, tell } from '../log';
import type { Argv, CommandModule } from 'yargs';
import { authFor, SecretOptions, SessionAuth } from '../credentials';
import { readSecret } from '../config';
import { initiatorName } from '../daemon/paths';
import { exitCodeFor, LogArgs, setupLogging, withCommonOptions, withIfaceOption } from './common';
import type { DigestPref } from '../config';
import { humanBytes } from '../util/size';

export interface DiscoverArgs extends SecretOptions, LogArgs {
  url: string;
  json: boolean;
  'initiator-name'?: string;
  digest?: DigestPref;
  'discovery-chap'?: string;
  'discovery-chap-secret-file'?: string;
  'discovery-chap-secret-env'?: string;
  iface?: string[];
}

/** How discovery went through one --iface. */
interface IfaceReport {
  iface: string;
  ok: boolean;
  error?: { code: string; message: string };
}

/**
 * Credentials for the discovery session: --discovery-chap USER with its own
 * secret (open-iscsi's discovery.sendtargets.auth.*), else the session's.
 */
export function discoveryAuth(argv: DiscoverArgs, session: SessionAuth | undefined): SessionAuth | undefined {
  const user = argv['discovery-chap'];
  if (!user) return session;
  const env = argv['discovery-chap-secret-env'] ?? 'ISCSI_NBD_DISCOVERY_CHAP_SECRET';
  const secret = readSecret({ file: argv['discovery-chap-secret-file'], env }, 'the discovery CHAP secret');
  if (!secret) {
    throw new ConfigError('ECONFIG', `--discovery-chap ${user} needs a secret: --discovery-chap-secret-file FILE or $${env}`);
  }
  return { user, secret };
}

export interface LunReport {
  lun: number;
  deviceType: number;
  deviceTypeName: string;
  vendor: string;
  product: string;
  revision: string;
  serial?: string;
  size?: string;
  blockSize?: number;
  writeProtect?: boolean;
  /** A disk's URL through the portal discover was given (no password), to paste into map, serve or copy. */
  url?: string;
  error?: string;
}

export interface TargetReport {
  name: string;
  portals: { host: string; port: number; tpgt: number }[];
  luns: LunReport[];
  error?: { code: string; message: string };
}

/** Log in to one target, list its LUNs and identify each. */
async function inspectTarget(t: DiscoveredTarget, portal: { host: string; port: number }, opts: { initiatorName: string; auth: ReturnType<typeof authFor>; digest: DigestPref; iface?: string }): Promise<TargetReport> {
  const report: TargetReport = { name: t.name, portals: t.portals, luns: [] };
  const session = new IscsiSession({
    portal,
    ...(opts.iface !== undefined ? { iface: opts.iface } : {}),
    targetName: t.name,
    initiatorName: opts.initiatorName,
    auth: opts.auth,
    digest: opts.digest,
    reconnect: false,
    log: rootLogger().child({ target: t.name }),
  });
  try {
    await session.connect();
    const probe = new LogicalUnit(session, 0, { maxRetries: 3 });
    const luns = await probe.reportLuns();
    for (const l of luns) {
      const lu = new LogicalUnit(session, l.lun, { maxRetries: 3 });
      try {
        const inq = await lu.inquiry();
        const r: LunReport = {
          lun: l.lun,
          deviceType: inq.deviceType,
          deviceTypeName: deviceTypeName(inq.deviceType),
          vendor: inq.vendor,
          product: inq.product,
          revision: inq.revision,
        };
        if (inq.deviceType === 0) {
          const info = await lu.open();
          r.size = info.sizeBytes.toString();
          r.blockSize = info.blockSize;
          r.serial = info.serial;
          r.writeProtect = info.writeProtect;
        }
        report.luns.push(r);
      } catch (err) {
        report.luns.push({ lun: l.lun, deviceType: -1, deviceTypeName: 'unknown', vendor: '', product: '', revision: '', error: (err as Error).message });
      }
    }
    await session.logout().catch(() => undefined);
  } catch (err) {
    const e = err as IscsiNbdError;
    report.error = { code: e.code ?? 'EIO', message: e.message };
  } finally {
    session.close();
  }
  return report;
}

/** iscsi://[user@]host:port/<iqn>/<lun>: the user but never the secret (it comes from the environment or a file). */
function lunUrl(portal: IscsiUrl, target: string, lun: number): string {
  const user = portal.auth ? `${encodeURIComponent(portal.auth.user)}@` : '';
  return `iscsi://${user}${formatHostPort(portal.host, portal.port)}/${target}/${lun}`;
}

export async function run(argv: DiscoverArgs): Promise<void> {
  // An interactive command: only warnings unless a level was asked for (the
  // shared option defaults to info, which would bury the answer in log lines).
  setupLogging(argv, 'warn', true);
  const url = parsePortalUrl(argv.url);
  const auth = authFor(url, argv);
  const dauth = discoveryAuth(argv, auth);
  const iname = initiatorName(argv['initiator-name']);
  const digest = argv.digest ?? 'prefer-none';
  const portal = { host: url.host, port: url.port };
  const ask = (iface?: string): Promise<DiscoveredTarget[]> => discover({ portal, initiatorName: iname, auth: dauth, digest, log: rootLogger(), ...(iface !== undefined ? { iface } : {}) }).catch((err: unknown) => {
    if ((err as IscsiNbdError).code !== 'EPROTO') throw err;
    // An HTTP server, an SSH daemon...: its answer to our Login Request does not parse as iSCSI.
    throw new IscsiNbdError('EPROTO', `${formatHostPort(url.host, url.port)} is not an iSCSI target (it answered our login with something else: ${(err as Error).message})`, { cause: err });
  });
  // With --iface: discovery through each interface (is the portal reachable on every path?); the
  // first that answers lists the targets and LUNs. One interface that fails fails the command.
  const ifaces = argv.iface ?? [];
  let targets: DiscoveredTarget[] | undefined;
  let via: string | undefined;
  const ifaceReports: IfaceReport[] = [];
  if (ifaces.length === 0) targets = await ask();
  for (const iface of ifaces) {
    try {
      const got = await ask(iface);
      ifaceReports.push({ iface, ok: true });
      if (!targets) {
        targets = got;
        via = iface;
      }
    } catch (err) {
      if (ifaces.length === 1) throw err;
      const e = err as IscsiNbdError;
      ifaceReports.push({ iface, ok: false, error: { code: e.code ?? 'EIO', message: e.message } });
    }
  }
  if (!targets) {
    const e = ifaceReports[0].error!;
    throw new IscsiNbdError(e.code as never, `no --iface reaches ${formatHostPort(url.host, url.port)}: ${ifaceReports.map((r) => `${r.iface}: ${r.error?.message}`).join('; ')}`);
  }
  const wanted = url.target ? targets.filter((t) => t.name === url.target) : targets;
  if (url.target && wanted.length === 0) {
    throw new IscsiNbdError('ENOTARGET', `target ${url.target} is not offered by ${formatHostPort(url.host, url.port)} (it offers: ${targets.map((t) => t.name).join(', ') || 'nothing'}); ${aclHint(iname)}`);
  }
  const reports: TargetReport[] = [];
  for (const t of wanted) {
    // Log in through the portal we were given: the advertised ones may not be reachable from here.
    const r = await inspectTarget(t, portal, { initiatorName: iname, auth, digest, ...(via !== undefined ? { iface: via } : {}) });
    for (const l of r.luns) if (l.deviceType === 0 && !l.error) l.url = lunUrl(url, t.name, l.lun);
    reports.push(r);
  }
  if (argv.json) {
    process.stdout.write(JSON.stringify({ portal: formatHostPort(url.host, url.port), initiatorName: iname, ...(ifaceReports.length ? { ifaces: ifaceReports } : {}), targets: reports }, null, 2) + '\n');
  } else {
    const out: string[] = [`Initiator: ${iname}`];
    for (const r of ifaceReports) out.push(`Interface: ${r.iface}: ${r.ok ? (r.iface === via ? 'reaches the portal (listed through it)' : 'reaches the portal') : `cannot reach the portal: ${r.error?.message}`}`);
    if (reports.length === 0) out.push(`${formatHostPort(url.host, url.port)} offers no targets to ${iname}; ${aclHint(iname)}`);
    for (const r of reports) {
      out.push(`Target: ${r.name}`);
      for (const p of r.portals) out.push(`  Portal: ${formatHostPort(p.host, p.port)},${p.tpgt}`);
      if (r.error) out.push(`  Error: ${r.error.message}`);
      for (const l of r.luns) {
        if (l.error) {
          out.push(`  Lun ${l.lun}: error: ${l.error}`);
          continue;
        }
        const size = l.size !== undefined ? `  ${humanBytes(BigInt(l.size), { trim: true })} (${l.size} bytes), block ${l.blockSize}${l.writeProtect ? ', read-only' : ''}` : '';
        out.push(`  Lun ${l.lun}: ${l.deviceTypeName}  ${l.vendor} ${l.product} ${l.revision}`.trimEnd() + size);
        if (l.url) out.push(`    ${l.url}`);
      }
    }
    process.stdout.write(out.join('\n') + '\n');
  }
  const failedIface = ifaceReports.find((r) => !r.ok);
  if (failedIface) {
    const text = `discovery through ${failedIface.iface} failed: ${failedIface.error!.message}`;
    tell('error', text, { iface: failedIface.iface, code: failedIface.error!.code }, `iscsi-nbd: ${text}`);
    process.exitCode = exitCodeFor(new IscsiNbdError(failedIface.error!.code as never, text));
  }
  const failedTarget = reports.find((r) => r.error);
  if (failedTarget) {
    const e = new IscsiNbdError(failedTarget.error!.code as never, failedTarget.error!.message);
    const text = `${failedTarget.name}: ${failedTarget.error!.message}`;
    // The listing already holds the whole error: say it once, and only point at it here.
    const failed = reports.filter((r) => r.error).length;
    const plain = argv.json ? `iscsi-nbd: ${text}` : `iscsi-nbd: ${failed === 1 ? `cannot log in to ${failedTarget.name}` : `cannot log in to ${failed} targets`} (see the Error line${failed === 1 ? '' : 's'} above)`;
    tell('error', text, { target: failedTarget.name, code: failedTarget.error!.code }, plain);
    process.exitCode = exitCodeFor(e);
  }
}

export const discoverCommand: CommandModule<object, DiscoverArgs> = {
  command: 'discover <url>',
  describe: 'list the targets, portals and LUNs behind an iSCSI portal',
  builder: (y) =>
    withIfaceOption(withCommonOptions(y))
      .positional('url', { type: 'string', demandOption: true, describe: 'iscsi://[user[%password]@]host[:port][/<target-iqn>], or host[:port]' })
      .option('json', { type: 'boolean', default: false, describe: 'print a JSON document' })
      .option('discovery-chap', { type: 'string', describe: "CHAP user for the discovery session only (default: the URL's user); targets still get the URL's credentials" })
      .option('discovery-chap-secret-file', { type: 'string', describe: 'read the discovery CHAP secret from this file' })
      .option('discovery-chap-secret-env', { type: 'string', default: 'ISCSI_NBD_DISCOVERY_CHAP_SECRET', describe: 'read the discovery CHAP secret from this environment variable' })
      .example('$0 discover 192.0.2.10', 'list what the portal offers (port 3260)')
      .example('ISCSI_NBD_CHAP_SECRET=... $0 discover iscsi://user@san:3260', 'with CHAP') as unknown as Argv<DiscoverArgs>,
  handler: (argv) => run(argv),
};
