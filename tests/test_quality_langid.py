"""Language identification and the script check, on real sentences in the 41 sample languages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from engine.quality import (
    Expectation,
    FilterConfig,
    Py3LangidDetector,
    accepted_codes,
    check_language,
    default_detector,
    expected_scripts,
    judge_expected,
    judge_language,
    script_of,
    script_share,
    weighted_letters,
)
from engine.quality.langid import Mode


@dataclass(frozen=True, slots=True)
class Lang:
    """A stand-in for prompts.Language: the fields the filters read."""

    iso639_1: str | None
    iso639_3: str
    script: str


L = {
    "en": Lang("en", "eng", "Latn"),
    "es": Lang("es", "spa", "Latn"),
    "fr": Lang("fr", "fra", "Latn"),
    "de": Lang("de", "deu", "Latn"),
    "pt": Lang("pt", "por", "Latn"),
    "it": Lang("it", "ita", "Latn"),
    "nl": Lang("nl", "nld", "Latn"),
    "sv": Lang("sv", "swe", "Latn"),
    "pl": Lang("pl", "pol", "Latn"),
    "tr": Lang("tr", "tur", "Latn"),
    "id": Lang("id", "ind", "Latn"),
    "sw": Lang("sw", "swa", "Latn"),
    "yo": Lang("yo", "yor", "Latn"),
    "ha": Lang("ha", "hau", "Latn"),
    "zu": Lang("zu", "zul", "Latn"),
    "wo": Lang("wo", "wol", "Latn"),
    "so": Lang("so", "som", "Latn"),
    "vi": Lang("vi", "vie", "Latn"),
    "fi": Lang("fi", "fin", "Latn"),
    "ht": Lang("ht", "hat", "Latn"),
    "ru": Lang("ru", "rus", "Cyrl"),
    "uk": Lang("uk", "ukr", "Cyrl"),
    "sr": Lang("sr", "srp", "Cyrl"),
    "ar": Lang("ar", "arb", "Arab"),
    "fa": Lang("fa", "pes", "Arab"),
    "ur": Lang("ur", "urd", "Arab"),
    "ary": Lang(None, "ary", "Arab"),
    "hi": Lang("hi", "hin", "Deva"),
    "mr": Lang("mr", "mar", "Deva"),
    "ne": Lang("ne", "npi", "Deva"),
    "bn": Lang("bn", "ben", "Beng"),
    "ta": Lang("ta", "tam", "Taml"),
    "te": Lang("te", "tel", "Telu"),
    "zh": Lang("zh", "zho", "Hans"),
    "ja": Lang("ja", "jpn", "Jpan"),
    "ko": Lang("ko", "kor", "Kore"),
    "el": Lang("el", "ell", "Grek"),
    "am": Lang("am", "amh", "Ethi"),
    "gu": Lang("gu", "guj", "Gujr"),
    "pa": Lang("pa", "pan", "Guru"),
    "si": Lang("si", "sin", "Sinh"),
}

WALK = {
    "en": (
        "The weather was pleasant yesterday, so we walked along the river and talked "
        "about our plans for the summer."
    ),
    "es": (
        "Ayer hizo buen tiempo, así que caminamos junto al río y hablamos de nuestros "
        "planes para el verano."
    ),
    "fr": (
        "Il faisait beau hier, alors nous avons marché le long de la rivière en parlant "
        "de nos projets pour l'été."
    ),
    "de": (
        "Gestern war das Wetter schön, also sind wir am Fluss entlang spaziert und haben "
        "über unsere Pläne für den Sommer gesprochen."
    ),
    "pt": (
        "Ontem o tempo estava agradável, então caminhamos ao longo do rio e conversamos "
        "sobre nossos planos para o verão."
    ),
    "it": (
        "Ieri il tempo era bello, così abbiamo passeggiato lungo il fiume e parlato dei "
        "nostri progetti per l'estate."
    ),
    "nl": (
        "Gisteren was het mooi weer, dus we wandelden langs de rivier en praatten over "
        "onze plannen voor de zomer."
    ),
    "sv": (
        "Igår var vädret fint, så vi promenerade längs floden och pratade om våra planer "
        "för sommaren."
    ),
    "pl": (
        "Wczoraj była ładna pogoda, więc spacerowaliśmy wzdłuż rzeki i rozmawialiśmy o "
        "naszych planach na lato."
    ),
    "tr": "Dün hava güzeldi, bu yüzden nehir boyunca yürüdük ve yaz için planlarımızı konuştuk.",
    "id": (
        "Kemarin cuacanya cerah, jadi kami berjalan di sepanjang sungai dan membicarakan "
        "rencana kami untuk liburan."
    ),
    "sw": (
        "Jana hali ya hewa ilikuwa nzuri, kwa hiyo tulitembea kando ya mto na kuzungumza "
        "kuhusu mipango yetu ya likizo."
    ),
    "yo": (
        "Ojú ọjọ́ dára lánàá, nítorí náà a rìn lẹ́gbẹ̀ẹ́ odò, a sì sọ̀rọ̀ nípa àwọn ètò wa fún ìsinmi."
    ),
    "ha": (
        "Jiya yanayi ya yi kyau, don haka muka yi tafiya a bakin kogi muna magana game da "
        "shirye-shiryenmu na hutu."
    ),
    "zu": (
        "Izolo isimo sezulu besisihle, ngakho sahamba eduze komfula sikhuluma ngezinhlelo "
        "zethu zamaholide."
    ),
    "wo": (
        "Démb jant bi dafa rafet, kon nu doxantu ci wetu dex gi te waxtaan ci sunu naal "
        "ngir nopalu."
    ),
    "so": (
        "Shalay cimiladu way fiicnayd, sidaas darteed waxaan ku socodnay webiga agtiisa "
        "oo ka wada hadalnay qorshayaashayada fasaxa."
    ),
    "vi": (
        "Hôm qua thời tiết đẹp, nên chúng tôi đi dạo dọc bờ sông và nói chuyện về kế "
        "hoạch cho mùa hè."
    ),
    "fi": "Eilen sää oli kaunis, joten kävelimme joen vartta ja puhuimme kesän suunnitelmistamme.",
    "ht": (
        "Yè tan an te bèl, kidonk nou te mache bò larivyè a epi nou te pale sou plan nou "
        "pou vakans yo."
    ),
    "ru": (
        "Вчера была хорошая погода, поэтому мы гуляли вдоль реки и говорили о наших планах на лето."
    ),
    "uk": "Учора була гарна погода, тому ми гуляли вздовж річки й говорили про наші плани на літо.",
    "sr": "Јуче је било лепо време, па смо шетали поред реке и причали о нашим плановима за лето.",
    "ar": "كان الطقس جميلاً بالأمس، لذلك تمشينا على ضفاف النهر وتحدثنا عن خططنا لفصل الصيف.",
    "fa": (
        "دیروز هوا خوب بود، برای همین در کنار رودخانه قدم زدیم و درباره برنامه‌هایمان "
        "برای تابستان صحبت کردیم."
    ),
    "ur": (
        "کل موسم بہت اچھا تھا، اس لیے ہم دریا کے کنارے چہل قدمی کرتے رہے اور گرمیوں کے "
        "اپنے منصوبوں کے بارے میں باتیں کیں۔"
    ),
    "ary": (
        "البارح الجو كان زوين، داكشي علاش تمشينا حدا الواد وهضرنا على البلانات ديالنا ديال الصيف."
    ),
    "hi": (
        "कल मौसम बहुत अच्छा था, इसलिए हम नदी के किनारे टहलते रहे और गर्मियों की अपनी योजनाओं के बारे में बात की।"
    ),
    "mr": (
        "काल हवामान छान होते, म्हणून आम्ही नदीकाठी फिरायला गेलो आणि उन्हाळ्याच्या आमच्या योजनांबद्दल बोललो."
    ),
    "ne": (
        "हिजो मौसम राम्रो थियो, त्यसैले हामी नदीको किनारमा हिँड्यौं र गर्मीका लागि हाम्रा "
        "योजनाहरूबारे कुरा गर्यौं।"
    ),
    "bn": ("গতকাল আবহাওয়া খুব ভালো ছিল, তাই আমরা নদীর ধারে হাঁটলাম এবং গ্রীষ্মের পরিকল্পনা নিয়ে কথা বললাম।"),
    "ta": ("நேற்று வானிலை நன்றாக இருந்தது, எனவே நாங்கள் ஆற்றங்கரையில் நடந்து கோடைக்கால திட்டங்களைப் பற்றிப் பேசினோம்."),
    "te": ("నిన్న వాతావరణం బాగుంది, అందుకే మేము నది ఒడ్డున నడుస్తూ వేసవి ప్రణాళికల గురించి మాట్లాడుకున్నాము."),
    "zh": "昨天天气很好，所以我们沿着河边散步，聊了聊我们的暑假计划。",
    "ja": "昨日は天気が良かったので、私たちは川沿いを散歩しながら夏の計画について話しました。",
    "ko": "어제는 날씨가 좋아서 우리는 강을 따라 산책하며 여름 계획에 대해 이야기했습니다.",
    "el": (
        "Χθες ο καιρός ήταν ωραίος, γι' αυτό περπατήσαμε δίπλα στο ποτάμι και μιλήσαμε "
        "για τα σχέδιά μας για το καλοκαίρι."
    ),
    "am": "ትናንት የአየር ሁኔታው ጥሩ ስለነበር በወንዙ ዳር እየተራመድን ስለ ክረምት እቅዳችን ተነጋገርን።",
    "gu": ("ગઈકાલે હવામાન સારું હતું, તેથી અમે નદીના કિનારે ચાલ્યા અને ઉનાળાની અમારી યોજનાઓ વિશે વાત કરી."),
    "pa": (
        "ਕੱਲ੍ਹ ਮੌਸਮ ਬਹੁਤ ਵਧੀਆ ਸੀ, ਇਸ ਲਈ ਅਸੀਂ ਦਰਿਆ ਦੇ ਕੰਢੇ ਸੈਰ ਕੀਤੀ ਅਤੇ ਗਰਮੀਆਂ ਦੀਆਂ ਆਪਣੀਆਂ ਯੋਜਨਾਵਾਂ ਬਾਰੇ ਗੱਲ ਕੀਤੀ।"
    ),
    "si": "ඊයේ කාලගුණය හොඳයි, ඒ නිසා අපි ගඟ අයිනේ ඇවිදිමින් ගිම්හාන සැලසුම් ගැන කතා කළා.",
}
PHOTO = {
    "en": (
        "Photosynthesis is the process by which plants use sunlight to turn water and "
        "carbon dioxide into sugar and oxygen."
    ),
    "es": (
        "La fotosíntesis es el proceso mediante el cual las plantas usan la luz del sol "
        "para transformar el agua y el dióxido de carbono en azúcar y oxígeno."
    ),
    "fr": (
        "La photosynthèse est le processus par lequel les plantes utilisent la lumière du "
        "soleil pour transformer l'eau et le dioxyde de carbone en sucre et en oxygène."
    ),
    "de": (
        "Die Photosynthese ist der Vorgang, bei dem Pflanzen mit Hilfe von Sonnenlicht "
        "Wasser und Kohlendioxid in Zucker und Sauerstoff umwandeln."
    ),
    "pt": (
        "A fotossíntese é o processo pelo qual as plantas usam a luz do sol para "
        "transformar água e dióxido de carbono em açúcar e oxigênio."
    ),
    "it": (
        "La fotosintesi è il processo con cui le piante usano la luce del sole per "
        "trasformare l'acqua e l'anidride carbonica in zucchero e ossigeno."
    ),
    "nl": (
        "Fotosynthese is het proces waarbij planten zonlicht gebruiken om water en "
        "koolstofdioxide om te zetten in suiker en zuurstof."
    ),
    "sv": (
        "Fotosyntes är den process där växter använder solljus för att omvandla vatten "
        "och koldioxid till socker och syre."
    ),
    "pl": (
        "Fotosynteza to proces, w którym rośliny wykorzystują światło słoneczne, aby "
        "zamienić wodę i dwutlenek węgla w cukier i tlen."
    ),
    "tr": (
        "Fotosentez, bitkilerin güneş ışığını kullanarak suyu ve karbondioksiti şekere ve "
        "oksijene dönüştürdüğü süreçtir."
    ),
    "id": (
        "Fotosintesis adalah proses ketika tumbuhan menggunakan sinar matahari untuk "
        "mengubah air dan karbon dioksida menjadi gula dan oksigen."
    ),
    "sw": (
        "Usanisinuru ni mchakato ambao mimea hutumia mwanga wa jua kubadilisha maji na "
        "kaboni dioksidi kuwa sukari na oksijeni."
    ),
    "yo": (
        "Fọ́tósíńtẹ́sísì ni ọ̀nà tí àwọn ewéko fi ń lo ìmọ́lẹ̀ oòrùn láti yí omi àti "
        "afẹ́fẹ́ carbon dioxide padà sí ṣúgà àti atẹ́gùn."
    ),
    "ha": (
        "Photosynthesis hanya ce da tsirrai ke amfani da hasken rana don mayar da ruwa da "
        "iskar carbon dioxide zuwa sukari da iskar oxygen."
    ),
    "zu": (
        "I-photosynthesis yinqubo izitshalo ezisebenzisa ngayo ukukhanya kwelanga "
        "ukuguqula amanzi ne-carbon dioxide kube ushukela nomoya-mpilo."
    ),
    "wo": (
        "Fotosentees mooy ni garab yi di jëfandikoo leeru jant bi ngir soppi ndox ak "
        "karboon diyoksid mu nekk suukar ak oksiseen."
    ),
    "so": (
        "Sawir-samaysku waa habka ay dhirtu u isticmaasho iftiinka qorraxda si ay biyaha "
        "iyo kaarboon laba-ogsaydhka ugu beddesho sonkor iyo ogsijiin."
    ),
    "vi": (
        "Quang hợp là quá trình thực vật sử dụng ánh sáng mặt trời để biến nước và khí "
        "cacbonic thành đường và khí oxy."
    ),
    "fi": (
        "Fotosynteesi on prosessi, jossa kasvit käyttävät auringonvaloa muuttaakseen "
        "veden ja hiilidioksidin sokeriksi ja hapeksi."
    ),
    "ht": (
        "Fotosentèz se pwosesis kote plant yo itilize limyè solèy la pou yo transfòme dlo "
        "ak gaz kabonik an sik ak oksijèn."
    ),
    "ru": (
        "Фотосинтез — это процесс, при котором растения используют солнечный свет, чтобы "
        "превратить воду и углекислый газ в сахар и кислород."
    ),
    "uk": (
        "Фотосинтез — це процес, під час якого рослини використовують сонячне світло, щоб "
        "перетворити воду та вуглекислий газ на цукор і кисень."
    ),
    "sr": (
        "Фотосинтеза је процес у којем биљке користе сунчеву светлост да би воду и "
        "угљен-диоксид претвориле у шећер и кисеоник."
    ),
    "ar": (
        "التمثيل الضوئي هو العملية التي تستخدم فيها النباتات ضوء الشمس لتحويل الماء وثاني "
        "أكسيد الكربون إلى سكر وأكسجين."
    ),
    "fa": (
        "فتوسنتز فرایندی است که در آن گیاهان از نور خورشید برای تبدیل آب و دی‌اکسید کربن "
        "به قند و اکسیژن استفاده می‌کنند."
    ),
    "ur": (
        "ضیائی تالیف وہ عمل ہے جس میں پودے سورج کی روشنی استعمال کر کے پانی اور کاربن "
        "ڈائی آکسائیڈ کو شکر اور آکسیجن میں بدلتے ہیں۔"
    ),
    "ary": (
        "التمثيل الضوئي هو الطريقة اللي كيستعملو بيها النباتات ضو الشمس باش يبدلو الما "
        "وثاني أكسيد الكربون لسكر وأكسجين."
    ),
    "hi": (
        "प्रकाश संश्लेषण वह प्रक्रिया है जिसमें पौधे सूर्य के प्रकाश का उपयोग करके पानी "
        "और कार्बन डाइऑक्साइड को शर्करा और ऑक्सीजन में बदलते हैं।"
    ),
    "mr": (
        "प्रकाशसंश्लेषण ही अशी प्रक्रिया आहे ज्यामध्ये वनस्पती सूर्यप्रकाशाचा वापर करून "
        "पाणी आणि कार्बन डायऑक्साइडचे साखर आणि ऑक्सिजनमध्ये रूपांतर करतात."
    ),
    "ne": (
        "प्रकाश संश्लेषण त्यो प्रक्रिया हो जसमा बिरुवाहरूले सूर्यको प्रकाश प्रयोग गरेर "
        "पानी र कार्बन डाइअक्साइडलाई चिनी र अक्सिजनमा परिणत गर्छन्।"
    ),
    "bn": (
        "সালোকসংশ্লেষণ হলো সেই প্রক্রিয়া যার মাধ্যমে উদ্ভিদ সূর্যের আলো ব্যবহার করে পানি "
        "ও কার্বন ডাই অক্সাইডকে চিনি ও অক্সিজেনে রূপান্তর করে।"
    ),
    "ta": (
        "ஒளிச்சேர்க்கை என்பது தாவரங்கள் சூரிய ஒளியைப் பயன்படுத்தி நீரையும் கார்பன் டை "
        "ஆக்சைடையும் சர்க்கரையாகவும் ஆக்சிஜனாகவும் மாற்றும் செயல்முறையாகும்."
    ),
    "te": (
        "కిరణజన్య సంయోగక్రియ అనేది మొక్కలు సూర్యరశ్మిని ఉపయోగించి నీటిని మరియు కార్బన్ డయాక్సైడ్‌ను చక్కెర మరియు ఆక్సిజన్‌గా మార్చే ప్రక్రియ."
    ),
    "zh": "光合作用是植物利用阳光把水和二氧化碳转化为糖和氧气的过程。",
    "ja": "光合成とは、植物が太陽の光を使って水と二酸化炭素を糖と酸素に変える仕組みのことです。",
    "ko": "광합성은 식물이 햇빛을 이용해 물과 이산화탄소를 당과 산소로 바꾸는 과정입니다.",
    "el": (
        "Η φωτοσύνθεση είναι η διαδικασία με την οποία τα φυτά χρησιμοποιούν το φως του "
        "ήλιου για να μετατρέψουν το νερό και το διοξείδιο του άνθρακα σε ζάχαρη και "
        "οξυγόνο."
    ),
    "am": "ፎቶሲንተሲስ ዕፅዋት የፀሐይ ብርሃንን ተጠቅመው ውሃንና ካርቦን ዳይኦክሳይድን ወደ ስኳርና ኦክስጅን የሚቀይሩበት ሂደት ነው።",
    "gu": (
        "પ્રકાશસંશ્લેષણ એ એવી પ્રક્રિયા છે જેમાં વનસ્પતિ સૂર્યપ્રકાશનો ઉપયોગ કરીને પાણી "
        "અને કાર્બન ડાયોક્સાઇડને ખાંડ અને ઓક્સિજનમાં ફેરવે છે."
    ),
    "pa": (
        "ਪ੍ਰਕਾਸ਼ ਸੰਸ਼ਲੇਸ਼ਣ ਉਹ ਪ੍ਰਕਿਰਿਆ ਹੈ ਜਿਸ ਵਿੱਚ ਪੌਦੇ ਸੂਰਜ ਦੀ ਰੌਸ਼ਨੀ ਦੀ ਵਰਤੋਂ ਕਰਕੇ ਪਾਣੀ "
        "ਅਤੇ ਕਾਰਬਨ ਡਾਈਆਕਸਾਈਡ ਨੂੰ ਖੰਡ ਅਤੇ ਆਕਸੀਜਨ ਵਿੱਚ ਬਦਲਦੇ ਹਨ।"
    ),
    "si": (
        "ප්‍රභාසංශ්ලේෂණය යනු ශාක හිරු එළිය භාවිතා කර ජලය සහ කාබන් ඩයොක්සයිඩ් සීනි සහ ඔක්සිජන් බවට පරිවර්තනය කරන ක්‍රියාවලියයි."
    ),
}


@pytest.fixture(scope="module")
def detector() -> Py3LangidDetector:
    return default_detector()


@pytest.mark.parametrize("code", sorted(L))
def test_every_sample_language_passes_in_its_own_language(
    code: str, detector: Py3LangidDetector
) -> None:
    """Two real sentences in each of the 41 languages are judged to be in that language."""
    for text in (WALK[code], PHOTO[code]):
        check = judge_language(text, L[code], detector=detector)
        assert check.ok, (code, check)
        assert check.status == "ok"


def test_a_reply_in_another_language_is_wrong_for_all_pairs_the_model_can_tell(
    detector: Py3LangidDetector,
) -> None:
    """Each language's sentence fails for every other language, except accepted confusables."""
    missed = []
    for code, text in PHOTO.items():
        for expected, lang in L.items():
            if expected == code or code in accepted_codes(lang) or expected == "wo":
                continue
            check = judge_language(text, lang, detector=detector)
            if check.ok or check.detected is None:
                missed.append((code, expected, check.detail))
    # Wolof text is unknown to the model: it is "unsure", never confidently another language.
    assert {c for c, _, _ in missed} <= {"wo"}, missed


@pytest.mark.parametrize(
    ("text", "expected", "ok", "detected"),
    [
        # Hindi reply to a Marathi conversation: same script, different language.
        (PHOTO["hi"], "mr", False, "hi"),
        (WALK["mr"], "hi", False, "mr"),
        (WALK["ne"], "hi", False, "ne"),
        # Russian reply to a Ukrainian or Serbian conversation.
        (PHOTO["ru"], "uk", False, "ru"),
        (PHOTO["ru"], "sr", False, "ru"),
        # Persian reply to an Urdu conversation.
        (PHOTO["fa"], "ur", False, "fa"),
        # Standard Arabic for Moroccan Arabic and back: an accepted confusable pair.
        (PHOTO["ar"], "ary", True, "ar"),
        (WALK["ary"], "ar", True, "ar"),
        # Malay for Indonesian is accepted.
        ("Saya akan ke Kuala Lumpur esok untuk berjumpa dengan kawan lama saya.", "id", True, None),
        # Japanese with many kanji is not Chinese, Chinese with no kana is not Japanese.
        ("東京大学法学部を卒業後、外務省に入省しました。", "ja", True, None),
        (PHOTO["zh"], "ja", False, "zh"),
        (PHOTO["ja"], "zh", False, "ja"),
        # English for Wolof: unknown to the model, but confidently English.
        (PHOTO["en"], "wo", False, "en"),
    ],
)
def test_closely_related_languages(
    text: str, expected: str, ok: bool, detected: str | None, detector: Py3LangidDetector
) -> None:
    """Confusable pairs are accepted; real drifts into a neighbour language are caught."""
    check = judge_language(text, L[expected], detector=detector)
    assert check.ok is ok, check
    if detected is not None:
        assert check.detected == detected, check


@pytest.mark.parametrize("code", ["wo", "ht"])
def test_latin_text_in_a_language_the_model_may_not_know_passes(
    code: str, detector: Py3LangidDetector
) -> None:
    """Wolof (not in the model) and Haitian Creole pass; Wolof is decided by its script."""
    check = judge_language(PHOTO[code], L[code], detector=detector)
    assert check.ok, check
    if code == "wo":
        assert check.method == "script"


@pytest.mark.parametrize(
    ("code", "script", "text"),
    [
        (
            "su",
            "Latin",
            "Wilujeng enjing. Abdi bade angkat ka pasar kanggo meser lauk sareng sayuran "
            "kanggo tuang wengi.",
        ),
        ("ti", "Ethiopic", "ከመይ ሓዲርኩም? ሎሚ ናብ ዕዳጋ ክኸይድ እየ ዓሳን ኣሕምልትን ክገዝእ።"),
        ("ckb", "Arabic", "بەیانیت باش. ئەمڕۆ دەچمە بازاڕ بۆ کڕینی ماسی و سەوزە بۆ نانی ئێوارە."),
        (
            "ceb",
            "Latin",
            "Maayong buntag! Unsa ang imong gibuhat karong adlawa? Moadto ko sa merkado aron "
            "mopalit og isda ug utanon.",
        ),
    ],
)
def test_unknown_language_read_as_a_neighbour_still_passes(
    code: str, script: str, text: str, detector: Py3LangidDetector
) -> None:
    """The model files Sundanese as Javanese, Tigrinya as Amharic: not a wrong language."""
    lang = Lang(None, code, script)
    assert not detector.knows(code)
    check = judge_language(text, lang, detector=detector)
    assert check.ok and check.method == "script", check
    # An English reply is still caught: by the model for Latin-script languages, by script else.
    assert not judge_language(PHOTO["en"], lang, detector=detector).ok


@pytest.mark.parametrize("mode", ["strict", "mixed"])
def test_a_language_the_model_does_not_know_keeps_its_leeway_beside_a_known_one(
    mode: Mode, detector: Py3LangidDetector
) -> None:
    """A Wolof translation conversation accepts Wolof or English: Wolof text, which the model
    files under a neighbour, still passes there as it does alone; a French reply does not."""
    wolof_or_english = Expectation((L["wo"], L["en"]), mode)
    assert not detector.knows("wo")
    for text in (PHOTO["wo"], PHOTO["en"]):
        assert judge_expected(text, wolof_or_english, detector=detector).ok
    assert not judge_expected(PHOTO["fr"], wolof_or_english, detector=detector).ok


@pytest.mark.parametrize(
    ("text", "expected", "dominant"),
    [
        ("Fotosinteza je proces u kojem biljke koriste sunčevu svetlost.", "sr", "Latin"),
        ("Photosynthesis turns water and carbon dioxide into sugar.", "hi", "Latin"),
        ("Χθες ο καιρός ήταν ωραίος και περπατήσαμε δίπλα στο ποτάμι.", "ru", "Greek"),
        (PHOTO["ur"], "hi", "Arabic"),
        ("Fotosentees mooy ni garab yi di jëfandikoo leeru jant bi.", "am", "Latin"),
    ],
)
def test_the_expected_script_must_dominate(
    text: str, expected: str, dominant: str, detector: Py3LangidDetector
) -> None:
    """A reply mostly in another script is wrong, even where the model shares the label."""
    check = judge_language(text, L[expected], detector=detector)
    assert not check.ok
    assert check.method == "script"
    assert check.detected == dominant


def test_short_replies_are_not_judged(detector: Py3LangidDetector) -> None:
    """Below the minimum length a reply passes as too short to judge, in any script."""
    for text, expected in (("OK, thanks!", "hi"), ("Merci beaucoup.", "de"), ("好的。", "ja")):
        check = judge_language(text, L[expected], detector=detector)
        assert check.status == "too_short", check
        assert check.ok
    assert not judge_language("Thank you very much, my friend!", L["hi"], detector=detector).ok


def test_code_urls_and_han_weights_count_towards_length() -> None:
    """Code blocks and URLs do not count as letters; a Han character counts as three."""
    assert weighted_letters("好的") == 6
    assert weighted_letters("abc") == 3
    config = FilterConfig(language_min_chars=20)
    reply = "Voici :\n```python\nprint('hello world, this is English code text')\n```"
    verdict = check_language(reply, L["fr"], config)
    assert verdict.ok and "too short" in verdict.detail


def test_code_in_a_reply_does_not_make_it_english(detector: Py3LangidDetector) -> None:
    """An English code block inside a Spanish reply is ignored by the language check."""
    reply = (
        "Aquí tienes una función que calcula el factorial de un número de forma recursiva:\n"
        "```python\ndef factorial(n):\n    # return the product of all numbers up to n\n"
        "    return 1 if n <= 1 else n * factorial(n - 1)\n```\n"
        "La función se llama a sí misma hasta llegar al caso base."
    )
    assert judge_language(reply, L["es"], detector=detector).ok
    assert not judge_language(reply, L["en"], detector=detector).ok


class FakeDetector:
    """A detector that knows the given codes and always returns the given ranking."""

    def __init__(self, known: set[str], ranking: Sequence[tuple[str, float]]) -> None:
        self.known = known
        self.ranking = list(ranking)

    def knows(self, code: str) -> bool:
        return code in self.known

    def rank(self, text: str) -> Sequence[tuple[str, float]]:
        return self.ranking


LONG_LATIN = "Mwen renmen manje diri ak pwa chak dimanch ak tout fanmi mwen lakay nou."


@pytest.mark.parametrize(
    ("ranking", "ok", "why"),
    [
        ([("ht", 0.9), ("fr", 0.1)], True, "detected ht"),
        ([("fr", 0.6), ("ht", 0.4)], True, "unsure"),  # expected still has 0.4
        ([("fr", 0.45), ("es", 0.45), ("ht", 0.05)], True, "unsure"),  # top below 0.5
        ([("fr", 0.95), ("ht", 0.05)], False, "detected fr (0.95), expected ht"),
        ([("gcf", 0.9), ("fr", 0.1)], True, "detected gcf"),  # a creole neighbour
        ([("zxx", 0.9), ("fr", 0.1)], True, "no natural language"),
    ],
)
def test_model_decision_rules(ranking: list[tuple[str, float]], ok: bool, why: str) -> None:
    """Wrong only for a confident top label outside the accepted set with little mass left."""
    fake = FakeDetector({"ht", "fr", "es", "gcf"}, ranking)
    check = judge_language(LONG_LATIN, L["ht"], detector=fake)
    assert check.ok is ok
    assert why in check.detail


def test_thresholds_are_configurable() -> None:
    """Raising min_confidence or accept_share turns a wrong verdict into a pass."""
    fake = FakeDetector({"ht", "fr"}, [("fr", 0.8), ("ht", 0.2)])
    assert not judge_language(LONG_LATIN, L["ht"], detector=fake, accept_share=0.3).ok
    assert judge_language(LONG_LATIN, L["ht"], detector=fake, accept_share=0.2).ok
    assert judge_language(LONG_LATIN, L["ht"], detector=fake, min_confidence=0.9).ok
    assert check_language(LONG_LATIN, L["ht"], FilterConfig(language_accept_share=0.2), fake).ok
    assert not check_language(LONG_LATIN, L["ht"], FilterConfig(language_accept_share=0.3), fake).ok


def test_unknown_language_and_unknown_script_is_not_judged() -> None:
    """A language neither the model nor the script table knows passes as unknown."""
    fake = FakeDetector(set(), [("fr", 0.7)])
    check = judge_language(LONG_LATIN, Lang(None, "xyz", "Klingon"), detector=fake)
    assert check.ok and check.status == "unknown"


@pytest.mark.parametrize(
    ("char", "script"),
    [
        ("a", "Latin"),
        ("ɗ", "Latin"),
        ("ệ", "Latin"),
        ("ж", "Cyrillic"),
        ("ј", "Cyrillic"),
        ("ش", "Arabic"),
        ("ے", "Arabic"),
        ("क", "Devanagari"),
        ("ਕ", "Gurmukhi"),
        ("ક", "Gujarati"),
        ("ক", "Bengali"),
        ("த", "Tamil"),
        ("త", "Telugu"),
        ("ක", "Sinhala"),
        ("ሀ", "Ethiopic"),
        ("漢", "Han"),
        ("か", "Hiragana"),
        ("カ", "Katakana"),
        ("한", "Hangul"),
        ("λ", "Greek"),
        ("א", "Hebrew"),
        ("ก", "Thai"),
        ("☃", "Other"),
    ],
)
def test_script_of(char: str, script: str) -> None:
    """Single characters map to their Unicode script."""
    assert script_of(char) == script


def test_script_names_accept_iso_codes_and_english_names() -> None:
    """ISO 15924 codes and English names resolve; Jpan and Kore cover their mixed scripts."""
    assert expected_scripts("Latn") == expected_scripts("Latin") == frozenset({"Latin"})
    assert expected_scripts("Cyrillic") == frozenset({"Cyrillic"})
    assert expected_scripts("Jpan") == frozenset({"Han", "Hiragana", "Katakana"})
    assert expected_scripts("Kore") == frozenset({"Hangul", "Han"})
    assert expected_scripts("Hans") == expected_scripts("Han (Simplified)") == frozenset({"Han"})
    assert expected_scripts("Gurmukhi") == frozenset({"Gurmukhi"})
    assert expected_scripts("Ge'ez") == frozenset({"Ethiopic"})
    assert expected_scripts("Klingon") is None


def test_script_share_counts_indic_vowel_signs_as_letters() -> None:
    """Devanagari vowel signs count with their letters, Latin words against them."""
    share = script_share("मैं ठीक हूँ, thanks", frozenset({"Devanagari"}))
    assert share.dominant == "Devanagari"
    assert 0.5 < share.share < 1.0
    assert script_share("123 !!", frozenset({"Latin"})).letters == 0
