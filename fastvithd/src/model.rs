use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Loader, NameMap, Params, Source};

use crate::FastVitHdConfig;
use crate::attention_block::AttentionBlock;
use crate::mobileone::MobileOneBlock;
use crate::names::ConvSpec;
use crate::patch_embed::PatchEmbed;
use crate::rep_cpe::RepCpe;
use crate::repmixer::RepMixerBlock;

/// One stage: an optional PatchEmbed, an optional RepCPE, then its blocks (RepMixer blocks in
/// stages 0–2, attention blocks in stages 3–4).
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    pub downsample: Option<PatchEmbed<B>>,
    pub pos_emb: Option<RepCpe<B>>,
    pub repmixer_blocks: Vec<RepMixerBlock<B>>,
    pub attention_blocks: Vec<AttentionBlock<B>>,
}

impl<B: Backend> Stage<B> {
    /// `[batch, c_in, h, w]` → `[batch, c, h', w']` (halved when the stage downsamples).
    pub fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(downsample) = &self.downsample {
            x = downsample.forward(x);
        }
        if let Some(pos_emb) = &self.pos_emb {
            x = pos_emb.forward(x);
        }
        for block in &self.repmixer_blocks {
            x = block.forward(x);
        }
        for block in &self.attention_blocks {
            x = block.forward(x);
        }
        x
    }
}

/// FastViTHD, the image encoder of FastVLM: stride 64, `2·embed_dims[4]` (3072) output channels.
#[derive(Module, Debug)]
pub struct FastVitHd<B: Backend> {
    /// Convolutional stem (`patch_embed.{0,1,2}`): 3×3 s2, depthwise 3×3 s2, 1×1; stride 4.
    pub stem: Vec<MobileOneBlock<B>>,
    pub stages: Vec<Stage<B>>,
    /// Grouped 3×3 (2 outputs per channel) + squeeze-excite + GELU.
    pub conv_exp: MobileOneBlock<B>,
}

/// Position of each stage's parts in Apple's `network` list: (downsample, pos_emb, blocks).
const NETWORK_INDEX: [(Option<usize>, Option<usize>, usize); 5] = [
    (None, None, 0),
    (Some(1), None, 2),
    (Some(3), None, 4),
    (Some(5), Some(6), 7),
    (Some(8), Some(9), 10),
];

/// Stages built from attention blocks rather than RepMixer blocks.
const FIRST_ATTENTION_STAGE: usize = 3;

impl<B: Backend> FastVitHd<B> {
    /// Builds the network from a checkpoint's tensors, named as `names` says (see [`crate::names()`]).
    ///
    /// `source` returns a tensor by its name in the checkpoint (float tensors of any precision;
    /// `None` when absent). Tensors the network does not use (`head.proj`,
    /// `num_batches_tracked`) are never asked for.
    pub fn load(
        config: &FastVitHdConfig,
        names: &NameMap,
        source: &mut Source<'_>,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Self::build(config, &mut Loader::new(source, names, device))
    }

    /// Builds the network from `params` (a checkpoint, or random values): the BatchNorms and
    /// layer scales folded in on the host.
    pub fn build(config: &FastVitHdConfig, params: &mut impl Params<B>) -> Result<Self, LoadError> {
        config.validate().map_err(LoadError::Config)?;
        let dims = config.embed_dims;

        let stem_specs = [
            ConvSpec::new([3, dims[0]], 3).stride(2),
            ConvSpec::depthwise(dims[0], 3).stride(2),
            ConvSpec::new([dims[0], dims[0]], 1),
        ];
        let stem = stem_specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| MobileOneBlock::load(params, &format!("patch_embed.{i}"), spec, false))
            .collect::<Result<Vec<_>, _>>()?;

        let mut stages = Vec::with_capacity(5);
        for (s, (down, pos, blocks)) in NETWORK_INDEX.into_iter().enumerate() {
            let dim = dims[s];
            let downsample = down
                .map(|i| PatchEmbed::load(params, &format!("network.{i}"), dims[s - 1]))
                .transpose()?;
            let pos_emb = pos
                .map(|i| RepCpe::load(params, &format!("network.{i}"), dim))
                .transpose()?;
            let (mut repmixer_blocks, mut attention_blocks) = (Vec::new(), Vec::new());
            for b in 0..config.layers[s] {
                let name = format!("network.{blocks}.{b}");
                if s < FIRST_ATTENTION_STAGE {
                    repmixer_blocks.push(RepMixerBlock::load(
                        params,
                        &name,
                        dim,
                        config.mlp_ratio,
                        config.norm_eps,
                    )?);
                } else {
                    attention_blocks.push(AttentionBlock::load(params, &name, dim, config)?);
                }
            }
            stages.push(Stage {
                downsample,
                pos_emb,
                repmixer_blocks,
                attention_blocks,
            });
        }

        let conv_exp = MobileOneBlock::load(
            params,
            "conv_exp",
            ConvSpec::new([dims[4], config.out_channels()], 3).groups(dims[4]),
            true,
        )?;
        Ok(Self {
            stem,
            stages,
            conv_exp,
        })
    }

    /// Images `[batch, 3, height, width]` (RGB in [0, 1]) → feature map
    /// `[batch, 3072, ⌈height/64⌉, ⌈width/64⌉]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = images;
        for block in &self.stem {
            x = block.forward(x);
        }
        for stage in &self.stages {
            x = stage.forward(x);
        }
        self.conv_exp.forward(x)
    }

    /// Images `[batch, 3, height, width]` → image tokens `[batch, h·w, 3072]`, row-major over the
    /// output grid (what FastVLM's projector consumes).
    pub fn tokens(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        Self::flatten(self.forward(images))
    }

    /// Feature map `[batch, c, h, w]` → tokens `[batch, h·w, c]`.
    pub fn flatten(map: Tensor<B, 4>) -> Tensor<B, 3> {
        let [batch, channels, h, w] = map.dims();
        map.reshape([batch, channels, h * w]).swap_dims(1, 2)
    }
}
