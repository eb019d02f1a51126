# syntax=docker/dockerfile:1
# iscsi-nbd: serve iSCSI LUNs as NBD exports.
#
#   docker build -t iscsi-nbd .
#   docker run -d --name iscsi-nbd --network host --stop-timeout 40 \
#     -v /etc/iscsi-nbd:/etc/iscsi-nbd:ro -v iscsi-nbd-state:/var/lib/iscsi-nbd iscsi-nbd
#
# Stage 1 (build): the whole toolchain, compiles TypeScript to dist/.
# Stage 2 (deps): production dependencies only.
# Stage 3 (runtime): node, dist/src, bin, production node_modules; runs as "node".

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN npx tsc -p . && test -f dist/src/cli/main.js

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="iscsi-nbd" \
      org.opencontainers.image.description="Serve remote iSCSI LUNs as Linux NBD block devices" \
      org.opencontainers.image.licenses="MIT"
ENV NODE_ENV=production \
    ISCSI_NBD_STATE_DIR=/var/lib/iscsi-nbd \
    ISCSI_NBD_CONTROL=/run/iscsi-nbd/control.sock \
    ISCSI_NBD_HEALTH_URL=http://127.0.0.1:9810/healthz
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY package.json ./
COPY bin ./bin
# Config is mounted here; the generated initiator name persists in the state dir.
RUN mkdir -p /etc/iscsi-nbd /var/lib/iscsi-nbd /run/iscsi-nbd \
 && chown node:node /var/lib/iscsi-nbd /run/iscsi-nbd \
 && chmod 0755 /app/bin/iscsi-nbd.js \
 && ln -s /app/bin/iscsi-nbd.js /usr/local/bin/iscsi-nbd
VOLUME ["/etc/iscsi-nbd", "/var/lib/iscsi-nbd"]
USER node
# 10809: NBD; 9810: /metrics, /healthz, /readyz.
EXPOSE 10809 9810
STOPSIGNAL SIGTERM
# No curl in slim images: node itself asks /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "require('http').get(process.env.ISCSI_NBD_HEALTH_URL, (r) => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1)).setTimeout(4000, () => process.exit(1))"]
ENTRYPOINT ["node", "/app/bin/iscsi-nbd.js"]
CMD ["serve", "--config", "/etc/iscsi-nbd/config.yaml", "--metrics", "0.0.0.0:9810"]
