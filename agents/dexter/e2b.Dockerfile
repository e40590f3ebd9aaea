# An E2B template with Dexter installed where the fleet's `dexter` runtime expects it
# (/home/user/agent), so a new sandbox's first job does not pay for the clone and
# `bun install` (~13 s). Build: `e2b template build -n dexter-fleet -d agents/dexter/e2b.Dockerfile`
# (or the SDK's Template.build), then use the profile in config/examples/dexter.toml with
#   template = "dexter-fleet"   repo = ""   setup = []
FROM e2bdev/code-interpreter:latest
USER user
WORKDIR /home/user
RUN curl -fsSL https://bun.com/install | bash
ENV PATH="/home/user/.bun/bin:${PATH}"
# Pin the commit: Dexter's main moves fast.
RUN git clone https://github.com/virattt/dexter.git agent \
 && cd agent \
 && git checkout 823052ed687a6f3ef0e48b5e7025c73e86d95775 \
 && bun install --frozen-lockfile --ignore-scripts
